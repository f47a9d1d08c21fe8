# Sourced by the launcher and the test scripts: the Open MPI settings every run here needs.
# Root sessions need Open MPI's explicit consent; more ranks than cores need oversubscription;
# and one BLAS thread per rank keeps 4 ranks from fighting over 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
export OMP_NUM_THREADS=1
MPIRUN_FLAGS=(--oversubscribe --bind-to none)
