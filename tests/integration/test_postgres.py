"""MLflow on PostgreSQL, as on a cluster: a real `satune sweep` whose trials all log at once to an
`mlflow server` whose backend store is a PostgreSQL cluster of this test's own (Debian's postgresql)."""

import pytest
from conftest import run_dir_of, satune, smoke_file, state_of, tune_dir_of
from postgres import INSTALL_HINT, Postgres, PostgresServer, pg_bin
from test_sweep import epochs_logged, runs_of, study_of

from satune.tracking import TRIAL_TAG

pytestmark = pytest.mark.integration

# The shared Ray head (conftest.ray_address) offers 2 CPUs, this machine's cores: 4 trials at half a
# CPU each (one torch thread each) run at once, twice the concurrency of a sweep at 1 CPU a trial.
TRIALS, CPU, EPOCHS = 4, 0.5, 3


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (127.0.0.1, a free port, SCRAM password auth): `make test` installs
    Debian's postgresql; without it this fails, never skips."""
    if pg_bin() is None:
        pytest.fail(f"no PostgreSQL under /usr/lib/postgresql/*/bin (initdb, pg_ctl): {INSTALL_HINT}")
    with Postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def postgres_mlflow(postgres, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with `postgres` as its backend store (2 workers, as docker/ runs it);
    the password reaches it in a pgpass file, never on its command line."""
    with PostgresServer(postgres, tmp_path_factory.mktemp("mlflow-postgres")) as server:
        assert server.proc is not None and postgres.password not in " ".join(map(str, server.proc.args))
        yield server.uri


def test_concurrent_trials_log_to_a_postgresql_backed_mlflow_server(tmp_path, postgres, postgres_mlflow, ray_address):
    """All trials train and log at once; afterwards Tune, Optuna and MLflow agree on which trials
    completed, every epoch is logged once, and the runs are rows in PostgreSQL."""
    from ray import tune  # (only to read Tune's saved experiment state)

    name = "pg"
    sweep = smoke_file(
        tmp_path,
        name,
        postgres_mlflow,
        **{
            "search.num_samples": TRIALS,
            "trial.train.epochs": EPOCHS,
            "resources": {"cpu": CPU, "gpu": 0, "max_concurrent": TRIALS},
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, "--no-report", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    # MLflow: one finished parent, one finished child per trial, each epoch once, the final metrics
    client, parents, children = runs_of(postgres_mlflow, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == TRIALS and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        assert epochs_logged(client, c) == list(range(EPOCHS)), c.info.run_id
        assert {"eval/clean_acc", "eval/pgd_acc", "train/loss"} <= set(c.data.metrics)

    # ... and the trials really ran at once: an instant when every child run was open
    starts, ends = [c.info.start_time for c in children], [c.info.end_time for c in children]
    assert max(starts) < min(ends), sorted(zip(starts, ends, strict=True))

    # Tune's saved state, Optuna's journal and MLflow name the same completed trials, with the same values
    run_dir = run_dir_of(tmp_path, name)
    tune_trials = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(tune_dir_of(run_dir))).trials}
    assert tune_trials == {c.data.tags[TRIAL_TAG]: "TERMINATED" for c in children}
    study = study_of(run_dir, name)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * TRIALS
    assert sorted(t.value for t in study.trials) == sorted(c.data.metrics["proxy/pgd_acc"] for c in children)
    assert state_of(tmp_path, name)["status"] == "finished"

    # The runs and every epoch's metrics are rows in PostgreSQL (asked directly, not through MLflow)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, status FROM runs WHERE experiment_id = %s", (int(experiment_id),))
        rows = dict(cur.fetchall())
        assert rows == {r.info.run_id: "FINISHED" for r in [*parents, *children]}
        cur.execute(
            "SELECT run_uuid, count(*) FROM metrics WHERE key = 'train/loss' AND run_uuid = ANY(%s) GROUP BY run_uuid",
            ([c.info.run_id for c in children],),
        )
        assert dict(cur.fetchall()) == {c.info.run_id: EPOCHS for c in children}
    conn.close()
