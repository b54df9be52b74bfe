"""What chooses and what reports: the best configuration, the final stage's winners and the report's
winner follow the select slice when the final slice disagrees; the verdicts against the best are
the paired tests they claim to be (checked against scipy)."""

from datetime import UTC, datetime

import pytest
from scipy.stats import binomtest, ttest_rel

from satune.report.fetch import SweepData, Trial
from satune.report.figures import best_trial, paired_comparison
from satune.specs import parse_sweep
from satune.sweep.summary import REPEAT_KEY, best_configuration, config_id
from satune.sweep.verdicts import WITHIN_NOISE, compare, outcome_column
from satune.tune.final_stage import winners

WEIGHTINGS = ["vanilla", "balanced", "overemphasized"]
# The select slice ranks vanilla > balanced > overemphasized; the final slice the other way round.
PROXY = {"vanilla": 0.40, "balanced": 0.35, "overemphasized": 0.30}
FINAL = {"vanilla": 0.20, "balanced": 0.24, "overemphasized": 0.30}
NOISE = [0.0, 0.01, -0.012]  # per repeat (seed), shared by every configuration: a paired design


def sweep(tmp_path, repeats: int = 3):
    return parse_sweep(
        {
            "name": "v",
            "storage": str(tmp_path),
            "trial": {
                "data": {"dataset": "digits"},
                "threat": {"norm": "l2", "eps": 0.75},
                "method": {"kind": "sat", "fraction": 0.1},
            },
            "search": {"grid": {"method.weighting": WEIGHTINGS}, "repeats": repeats},
            "final_eval": {"top_k": 2, "autoattack": {"version": "custom", "attacks": ["apgd-ce"]}},
        }
    )


def rows(repeats: int = 3):
    from satune.sweep.summary import TrialRow

    out = []
    for r in range(repeats):
        for i, w in enumerate(WEIGHTINGS):
            noise = NOISE[r] + 0.002 * i * r  # the differences vary from seed to seed
            metrics = {
                "proxy/pgd_acc": PROXY[w] + noise,
                "proxy/pgd_n": 162.0,
                "proxy/pgd_acc_lo": 0.3,
                "proxy/pgd_acc_hi": 0.5,
                "eval/pgd_acc": FINAL[w] + noise + 0.1,
                "final/aa_acc": FINAL[w] + noise,
            }
            config = {"method.weighting": w} | ({REPEAT_KEY: r} if repeats > 1 else {})
            out.append(TrialRow(f"{w[:3]}{r}", "TERMINATED", config, metrics, seed=r))
    return out


def outcomes(trial_id: str, n: int = 40) -> list[str]:
    """Per-example AutoAttack outcomes: overemphasized gets the last 8 examples right that vanilla misses."""
    right = {"van": 20, "bal": 24, "ove": 28}[trial_id[:3]]
    return ["1" if k < right else "0" for k in range(n)]


def test_the_best_configuration_and_the_final_stages_winners_follow_the_select_slice(tmp_path):
    spec, trials = sweep(tmp_path), rows()
    best, _ = best_configuration(spec, trials)
    assert best.config["method.weighting"] == "vanilla"  # first on the select slice, last on the final one
    chosen = winners(spec, trials, spec.final_eval.top_k)
    assert sorted({r.config["method.weighting"] for r in chosen}) == ["balanced", "vanilla"]
    assert len(chosen) == 6  # every repeat of both winning configurations


def test_the_verdicts_are_the_paired_t_test_over_seeds_and_the_pooled_mcnemar_test(tmp_path):
    spec, trials = sweep(tmp_path), rows()
    comparison = compare(spec, trials, lambda row, metric: outcomes(row.trial_id))
    assert comparison.best.config == {"method.weighting": "vanilla"}
    assert [comparison.others[v.other].config["method.weighting"] for v in comparison.verdicts] == [
        "balanced",
        "overemphasized",
    ]  # (closest on the select slice first)
    by = {comparison.others[v.other].config["method.weighting"]: v for v in comparison.verdicts}
    v = by["overemphasized"]
    best = [r.metrics["final/aa_acc"] for r in trials if r.trial_id.startswith("van")]
    other = [r.metrics["final/aa_acc"] for r in trials if r.trial_id.startswith("ove")]
    ref = ttest_rel(best, other)
    assert v.metric == "final/aa_acc" and v.mean == pytest.approx(sum(best) / 3 - sum(other) / 3)
    assert v.seeds.p == pytest.approx(ref.pvalue) and (v.seeds.lo, v.seeds.hi) == pytest.approx(
        ref.confidence_interval(0.95)
    )
    assert (v.examples, v.best_only, v.other_only) == (120, 0, 24)  # 8 examples per seed, pooled over 3 seeds
    assert v.p_examples == pytest.approx(binomtest(0, 24, 0.5).pvalue)
    assert v.verdict == "best behind, beyond seed noise"  # the select slice's choice loses on the final slice
    assert comparison.note is None and comparison.selection == (
        "proxy/pgd_acc on the select slice, 162 examples (mean over 3 repeats)"
    )


def test_a_lead_no_test_supports_is_within_noise(tmp_path):
    spec, trials = sweep(tmp_path), rows()
    for r in trials:  # the same final-slice numbers but for the seed's noise, and no per-example outcomes
        i, repeat = WEIGHTINGS.index(r.config["method.weighting"]), r.config[REPEAT_KEY]
        r.metrics["final/aa_acc"] = 0.25 + NOISE[repeat] + 0.004 * ((i + repeat) % 3 - 1)
    comparison = compare(spec, trials, None)
    assert all(v.verdict == WITHIN_NOISE and v.p_examples is None for v in comparison.verdicts)


def test_without_repeats_the_sweep_says_it_cannot_separate_seed_noise(tmp_path):
    comparison = compare(sweep(tmp_path, repeats=1), rows(repeats=1), lambda row, metric: outcomes(row.trial_id))
    assert "cannot be told from seed noise" in comparison.note
    (first, _) = comparison.verdicts
    assert first.seeds is None and len(first.differences) == 1 and first.verdict == WITHIN_NOISE  # 4 vs 0: p 0.125


def test_the_reports_winner_and_its_comparison_follow_the_select_slice(tmp_path):
    spec, trials = sweep(tmp_path), rows()
    found = [Trial(f"run-{r.trial_id}", r, r.trial_id, {}) for r in trials]
    data = SweepData("http://127.0.0.1:9", spec, "parent", "v-1", datetime.now(UTC), {}, found, tmp_path)
    for t in found:  # what MLflow would hand the report: each trial's final-stage outcomes
        data._cache[t.run_id, "final/"] = ["0-custom-nall"]
        data._cache[t.run_id, "final/0-custom-nall/outcomes.csv"] = "index,label,clean,aa\n" + "".join(
            f"{k},0,1,{o}\n" for k, o in enumerate(outcomes(t.row.trial_id))
        )
    assert best_trial(data) == "van0"
    (drawn,) = paired_comparison(data)
    vanilla = config_id({"method.weighting": "vanilla"})
    assert {r["best"] for r in drawn.table} == {vanilla}
    assert [r["other_label"] for r in drawn.table] == ["weighting=balanced", "weighting=overemphasized"]
    assert drawn.table[1]["other_only"] == 24 and drawn.table[1]["verdict"] == "best behind, beyond seed noise"
    assert outcome_column("index,label,clean,aa\n0,1,1,\n", "aa") == [""]  # an example AutoAttack did not cover


def test_a_paper_reproduced_on_its_test_set_says_so_wherever_the_choice_is_reported(tmp_path):
    from satune.sweep.summary import SweepResult, table

    spec = parse_sweep(
        {
            "name": "v",
            "storage": str(tmp_path),
            "trial": {
                "data": {"dataset": "digits"},
                "threat": {"norm": "l2", "eps": 0.75},
                "method": {"kind": "sat", "fraction": 0.1},
            },
            "search": {
                "grid": {"method.weighting": WEIGHTINGS},
                "repeats": 3,
                "metric": "eval/pgd_acc",
                "select_on": "final",
            },
        }
    )
    trials = rows()
    comparison = compare(spec, trials, None)
    assert comparison.optimistic and comparison.selection == "eval/pgd_acc, selected on the test slice (optimistic)"
    assert comparison.best.config == {"method.weighting": "overemphasized"}  # chosen on the final slice, as asked
    best, _ = best_configuration(spec, trials)
    header, _ = table(spec, SweepResult(tmp_path, trials, best))
    assert "eval/pgd_acc [95 %] (test slice: optimistic)" in header
    found = [Trial(f"run-{r.trial_id}", r, r.trial_id, {}) for r in trials]
    data = SweepData("http://127.0.0.1:9", spec, "parent", "v-1", datetime.now(UTC), {}, found, tmp_path)
    data._comparison = comparison  # (what the report computes from MLflow; no outcomes here)
    from satune.report.page import render

    page = render(data, [], table(spec, SweepResult(tmp_path, trials, best)), None, [], tmp_path)
    assert "Selected on the test slice (optimistic)" in page


def test_a_tie_on_the_select_slice_is_broken_the_same_way_whatever_the_order_of_the_trials(tmp_path):
    """On a select slice of a few hundred images two trials often tie; a resumed sweep lists its trials
    in another order, and must still name the same best and evaluate the same winners."""
    from satune.sweep.summary import TrialRow

    spec = sweep(tmp_path, repeats=1)
    tied = [
        TrialRow(t, "TERMINATED", {"method.weighting": w}, {"proxy/pgd_acc": p})
        for t, w, p in (("c", "vanilla", 0.4), ("a", "balanced", 0.4), ("b", "overemphasized", 0.3))
    ]
    for order in (tied, tied[::-1]):
        assert best_configuration(spec, order)[0].trial_id == "a"
        assert [r.trial_id for r in winners(spec, order, 2)] == ["a", "c"]
        assert [r.trial_id for r in winners(spec, order, 1)] == ["a"]
