"""The sweep file as pydantic v2 models, and loading with errors that name the YAML path.

Imports pydantic, yaml and the standard library only: validating a sweep never starts torch, Ray or
MLflow. Every model forbids unknown keys; domain rules live next to the fields they guard.

    base      the base model, constrained types, SpecError, safe YAML
    names     every name table: datasets, architectures, algorithms, domains, metrics
    methods   one spec class per method kind, with what the kind needs from a trial
    trial     the trial (data, model, threat, method, recipe, evaluation, runtime), its metrics
    paths     dotted paths into a trial: --set, search keys
    sweep     the sweep: search, scheduler, resources, tracking
    messages  validation errors as lines a user reads
    load      a sweep file in, a SweepSpec out
"""

from satune.specs.base import Spec, SpecError, parse_yaml, shown
from satune.specs.load import (
    absolutize,
    absolutize_trial,
    load_sweep,
    parse_final_settings,
    parse_sweep,
    parse_trial,
    read_yaml,
)
from satune.specs.methods import (
    METHOD_KINDS,
    METHOD_SPECS,
    AtSpec,
    AuxSpec,
    BiamatSpec,
    CleanSpec,
    MethodSpec,
    MethodSpecBase,
    SatSpec,
    TradesSpec,
    TransferSpec,
    class_count,
)
from satune.specs.names import (
    AUX_CLASSES,
    DATASET_CLASSES,
    DOMAIN_KINDS,
    EMBEDDED_DATASETS,
    FINAL_ONLY,
    PER_EPOCH_METRICS,
    AlgorithmName,
    ArchName,
    AuxDatasetName,
    DatasetName,
    interval_keys,
    is_final,
)
from satune.specs.paths import apply_overrides, resolve_field, set_path
from satune.specs.sweep import (
    DomainSpec,
    FinalAutoAttackSpec,
    FinalEvalSpec,
    ResourcesSpec,
    RunsOf,
    SchedulerSpec,
    SearchSpec,
    SweepSpec,
    TaskResourcesSpec,
    TrackingSpec,
)
from satune.specs.trial import (
    AutoAttackSpec,
    DataSpec,
    EvalSpec,
    ModelSpec,
    RuntimeSpec,
    ThreatSpec,
    TrainSpec,
    TrialSpec,
    reported_metrics,
)

__all__ = [
    "AUX_CLASSES",
    "DATASET_CLASSES",
    "DOMAIN_KINDS",
    "EMBEDDED_DATASETS",
    "FINAL_ONLY",
    "FinalAutoAttackSpec",
    "FinalEvalSpec",
    "TaskResourcesSpec",
    "METHOD_KINDS",
    "METHOD_SPECS",
    "PER_EPOCH_METRICS",
    "AlgorithmName",
    "ArchName",
    "AtSpec",
    "AutoAttackSpec",
    "AuxDatasetName",
    "AuxSpec",
    "BiamatSpec",
    "CleanSpec",
    "DataSpec",
    "DatasetName",
    "DomainSpec",
    "EvalSpec",
    "MethodSpec",
    "MethodSpecBase",
    "ModelSpec",
    "ResourcesSpec",
    "RunsOf",
    "RuntimeSpec",
    "SatSpec",
    "SchedulerSpec",
    "SearchSpec",
    "Spec",
    "SpecError",
    "SweepSpec",
    "ThreatSpec",
    "TrackingSpec",
    "TradesSpec",
    "TransferSpec",
    "TrainSpec",
    "TrialSpec",
    "absolutize",
    "absolutize_trial",
    "apply_overrides",
    "class_count",
    "load_sweep",
    "parse_final_settings",
    "parse_sweep",
    "parse_trial",
    "parse_yaml",
    "interval_keys",
    "is_final",
    "read_yaml",
    "reported_metrics",
    "resolve_field",
    "set_path",
    "shown",
]
