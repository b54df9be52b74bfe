"""Every tag satune reads or writes on an MLflow run, by name: one table, so a rename happens here
(tests/unit/test_tracking.py fails on a tag name written anywhere else)."""

# MLflow's own keys, as its UI (3.17, server/js/build) reads them. The kind is what the UI's own
# experiment-kind selector writes; 3.17 itself picks the view by the `workflowType` URL parameter (runs_link).
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's description, markdown
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + view id: a saved view of an experiment's runs table
EXPERIMENT_KIND_TAG, ML_EXPERIMENT = "mlflow.experimentKind", "custom_model_development"

# The sweep's parent run
SWEEP_TAG = "satune.sweep"  # the parent run's name: <sweep name>-<run directory>
SWEEP_NAME_TAG = "satune.sweep_name"
TRIALS_TAG = "satune.trials"  # how many trials the sweep ran
ERRORS_TAG = "satune.errors"  # how many of them failed for good
SELECTION_TAG = "satune.selection"  # what chose the best: metric, slice, n
BEST_TRIAL_TAG = "satune.best_trial"
BEST_CONFIG_TAG = "satune.best_config"  # with repeats: the best configuration's id
PARETO_TAG = "satune.pareto_trials"  # comma-separated trial ids
TRANSFER_MATRIX_TAG = "satune.transfer_matrix"  # the matrix's title
VERDICTS_TAG = "satune.verdicts"  # what the verdicts compare, or why there are none
VERDICT_TAG_PREFIX = "satune.verdict."  # + configuration id: its verdict as a sentence

# A trial's run
TRIAL_TAG = "satune.trial_id"
CONFIG_TAG = "satune.config"  # groups a configuration's repeats in the UI
REPEAT_TAG = "satune.repeat"
NODE_TAG = "satune.node"  # where this attempt ran: Ray's node id (address)
ACTOR_TAG = "satune.actor"
RESUMED_TAG = "satune.resumed_after_epoch"
COLLAPSED_TAG = "satune.collapsed"  # catastrophic overfitting: at which epoch
OVERFITTING_TAG = "satune.robust_overfitting"
STOPPED_EARLY_TAG = "satune.stopped_early"  # a scheduler stopped it between reports
ORPHAN_TAG = "satune.orphan"  # why a run was deleted: its driver died before Tune recorded the trial
INTEGRITY_TAG = "satune.integrity"  # "ok", or the evaluation checks a trial failed

# The final evaluation of a run (the final stage, `satune eval`)
FINAL_TAG = "satune.final_eval"  # the settings key of the latest final evaluation of a run
FINAL_AUTOATTACK_TAG = "satune.final.autoattack"
FINAL_THREAT_TAG = "satune.final.threat"
FINAL_N_TAG = "satune.final.n"
FINAL_SEED_TAG = "satune.final.seed"
FINAL_PACKAGE_TAG = "satune.final.package"
