#!/usr/bin/env bash
# Open MPI's rsh agent for the namespace cluster (--mca plm_rsh_agent takes one program, run as
# "<agent> HOST COMMAND..." in place of ssh): see netns_cluster.sh, subcommand agent.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/netns_cluster.sh" agent "$@"
