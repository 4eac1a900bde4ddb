"""rlrun's Optuna sweeper: Hydra's (hydra-optuna-sweeper), with one paragraph where Optuna would end in a traceback.

The hparams_search presets select it with `hydra.sweeper._target_`. Hydra instantiates sweepers only from the
`hydra_plugins` package, hence this module outside `rlrun/`. Everything but two endings is Hydra's sweeper as
it is. When every trial failed, its `study.best_trial` raises from inside Optuna ("Record does not exist.", a
traceback) after the trials' own errors have scrolled by: this sweeper says that no trial finished and exits
with status 1. When a continued study's `choice(…)` values changed, or Optuna refuses the search's settings before
its first trial (a reversed `interval`, a log range from 0, a storage URL it cannot open), its traceback becomes one
paragraph and exit status 2 (bad input). Trials of this search left RUNNING by any error or a Ctrl-C are marked
FAIL in the study (they would otherwise stay RUNNING in optuna.db for ever).
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `sweeps` extra is not installed: no Optuna sweeper to extend
    OptunaSweeper = None

if OptunaSweeper is not None:

    class RlrunOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> Any:
            began = datetime.datetime.now()  # Optuna's trial times are naive local times too
            try:
                return super().sweep(arguments)
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C (a job's interrupted run exits with 130)
                from rlrun.sweep import fail_running_trials

                fail_running_trials(self.sweeper, began)
                raise
            except Exception as exc:  # noqa: BLE001 - explained below, or raised as it is
                from rlrun.cli import EXIT_BAD_INPUT, EXIT_FAILED, _error
                from rlrun.sweep import fail_running_trials, optuna_search_error

                # job_idx counts the trials launched: an error before the first is the search's own settings
                explained = optuna_search_error(self.sweeper, exc, started=self.sweeper.job_idx > 0)
                fail_running_trials(self.sweeper, began)  # the search ends here, explained or not
                if explained is None:
                    raise
                message, bad_input = explained
                _error(message)
                sys.exit(EXIT_BAD_INPUT if bad_input else EXIT_FAILED)
