import math

import numpy as np
import pandas as pd
import pytest

from cifarkit import report

from conftest import run_cli


@pytest.mark.parametrize("accuracy, corrupted, decision", [
    (0.69, 0.60, "BUY"),
    (0.7070, 0.65, "BUY"),                # 7,070 / 10,000: p ~ 0.064, not significant
    (0.72, 0.65, "BUILD WITH CAVEATS"),   # significant, thin lead
    (0.7999, 0.75, "BUILD WITH CAVEATS"),
    (0.80, 0.75, "BUILD"),
    (0.95, 0.60, "BUILD WITH CAVEATS"),   # strong, but fragile under corruptions
    (0.95, 0.85, "BUILD"),
])
def test_recommendation_rule_at_its_edges(accuracy, corrupted, decision):
    n = 10_000
    correct = round(accuracy * n)
    p = report.beats_claim_pvalue(correct, n, 0.70)
    assert report.recommend(correct / n, p, corrupted).decision == decision


def fake_run(tmp_path, accuracy):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)
    preds = labels.copy()
    wrong = rng.choice(len(labels), size=round((1 - accuracy) * len(labels)), replace=False)
    preds[wrong] = (labels[wrong] + 1) % 10
    log = pd.DataFrame(dict(epoch=[1, 2], train_loss=[1.0, 0.5], train_acc=[0.6, 0.8], val_loss=[1.1, 0.6],
                            val_acc=[0.55, 0.75], train_seconds=[30.0, 60.0]))
    run = dict(model="simple_cnn", params=290_000, size_bytes=1_200_000, device="cpu", log=log)
    corrupted = {k: accuracy - 0.1 for k in report.CORRUPTIONS}
    classes = [f"class{i}" for i in range(10)]
    return dict(labels=labels, preds=preds, classes=classes, corrupted=corrupted, run=run,
                timing=dict(images_per_s=1234.0, device="CPU", batch=512, tta="flip"))


def wilson_by_formula(correct, n, z=1.959963984540054):
    """Wilson (1927) score interval, written out: the report must state this interval, not another one."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def binomial_tail(correct, n, claimed):
    """P(X >= correct) for X ~ Bin(n, claimed), summed term by term."""
    def log_term(k):
        return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                + k * math.log(claimed) + (n - k) * math.log(1 - claimed))
    return sum(math.exp(log_term(k)) for k in range(correct, n + 1))


@pytest.mark.parametrize("correct, verdict, decision", [(7_070, "not significantly", "BUY"),
                                                        (7_120, "significantly", "BUILD WITH CAVEATS")])
def test_report_states_our_interval_test_and_rule_for_a_known_count(tmp_path, correct, verdict, decision):
    """7,070 / 10,000 could be the vendor's 70% plus luck (p ~ 0.064: BUY); 7,120 could not (p ~ 0.004), but its
    lead is under 10 points (BUILD WITH CAVEATS)."""
    labels = np.repeat(np.arange(10), 1000)
    preds = labels.copy()
    preds[correct:] = (labels[correct:] + 1) % 10
    kw = fake_run(tmp_path, 0.9)
    kw.update(labels=labels, preds=preds)
    _, summary = report.build_vs_buy(tmp_path, **kw)
    low, high = wilson_by_formula(correct, 10_000)
    p = binomial_tail(correct, 10_000, 0.70)
    assert summary[0] == (f"test accuracy {correct / 100:.2f}% (95% CI {low:.2%}-{high:.2%}); vs vendor 70%: {verdict} "
                          f"better (exact one-sided binomial test, {report.fmt_p(p)})")
    assert summary[-1] == f"recommendation: {decision}"


def test_report_sections_figures_and_regeneration(tmp_path):
    kw = fake_run(tmp_path, 0.9)
    path, summary = report.build_vs_buy(tmp_path / "a", **kw)
    text = path.read_text()
    for section in ("**Recommendation: BUILD.**", "95% confidence interval (Wilson)", "exact one-sided binomial test",
                    "GPipe", "ViT-H/14", "## The rule behind the recommendation", "## Cost", "## Robustness",
                    "## Accuracy per class", "Confusion matrix", "## Training curves", "## Measured on this machine",
                    "290,000 parameters", "1.2 MB", "1,234 images/s", "flip TTA"):
        assert section in text, section
    for fig in ("comparison", "confusion", "per_class", "curves"):
        png = tmp_path / "a" / f"cifar10_{fig}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"cifar10_{fig}.png" in text
    assert "90.00%" in text and summary[-1] == "recommendation: BUILD"
    # same inputs -> same bytes, except the timing section
    kw["timing"]["images_per_s"] = 999.0
    path2, _ = report.build_vs_buy(tmp_path / "b", **kw)
    head = text.split("## Measured on this machine")[0]
    assert path2.read_text().split("## Measured on this machine")[0] == head
    for fig in ("comparison", "confusion", "per_class", "curves"):
        assert (tmp_path / "a" / f"cifar10_{fig}.png").read_bytes() == (tmp_path / "b" / f"cifar10_{fig}.png").read_bytes()


def test_a_run_without_val_images_reports_none_and_plots_train_alone(tmp_path):
    kw = fake_run(tmp_path, 0.9)
    kw["run"]["log"][["val_loss", "val_acc"]] = float("nan")  # --train-on-val: no validation figure exists
    path, _ = report.build_vs_buy(tmp_path, **kw)
    text = path.read_text()
    assert "| Best validation accuracy | none: no images held out" in text and "Training loss sits above" not in text
    assert "nan" not in text.lower() and (tmp_path / "cifar10_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_weakest_classes_named(tmp_path):
    kw = fake_run(tmp_path, 1.0)
    kw["preds"][kw["labels"] == 3] = 0  # class3 always wrong
    path, summary = report.build_vs_buy(tmp_path, **kw)
    assert "weakest classes: class3 (0.0%)" in summary[2]


def test_corruptions_are_deterministic_and_change_images():
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for name in [*report.CORRUPTIONS, *report.HELD_OUT]:
        a, b = report.corrupt(images, name), report.corrupt(images, name)
        assert a.shape == images.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, images), name


def test_predict_report_end_to_end(trained, predict_main, capsys, tmp_path):
    code, out, err = run_cli(predict_main, ["--checkpoint", str(trained.run / "best.pt"), "--report"], capsys)
    assert code == 0, err
    text = (tmp_path / "reports" / "cifar10_build_vs_buy.md").read_text()
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    truth = pd.read_csv(trained.split / "solution.csv")
    correct = int((sub["label"] == truth["label"]).sum())
    assert f"({correct:,} / 40)" in text
    summary = out[out.index("test accuracy "):out.index("wrote reports/")].splitlines()
    assert len(summary) == 5 and summary[-1].startswith("recommendation: ")


def test_predict_report_with_a_baseline(trained, predict_main, capsys, tmp_path):
    best = str(trained.run / "best.pt")
    code, out, err = run_cli(predict_main, ["--checkpoint", best, "--report", "--baseline", best], capsys)
    assert code == 0, err
    text = (tmp_path / "reports" / "cifar10_build_vs_buy.md").read_text()
    assert "## Ours vs the baseline" in text and "**ship ours**" in text  # the same model: rule 1 both ways
    assert "robustness: JPEG quality 30" in out and (tmp_path / "reports" / "cifar10_corruptions.png").exists()
    jpeg = next(line for line in text.splitlines() if line.startswith("| JPEG quality 30 |")).split(" | ")
    assert jpeg[1] == jpeg[3] and jpeg[4] == "**+0.0** |"  # the baseline measured on the same corrupted images
    code, _, err = run_cli(predict_main, ["--checkpoint", best, "--baseline", best], capsys)
    assert code == 2 and err.strip() == "error: --baseline is a model for the report to compare with: add --report"


def test_report_refuses_cifar100(cifar100_dir, trained, train_main, predict_main, capsys, tmp_path):
    code, _, err = run_cli(train_main, ["--model", "simple_cnn", "--data-dir", str(cifar100_dir),
                                        "--train-per-class", "4", "--val-per-class", "1", "--epochs", "1"], capsys)
    assert code == 0, err
    code, out, err = run_cli(predict_main, ["--report"], capsys)
    assert code == 2 and "--report compares with CIFAR-10" in err
    assert not (tmp_path / "submissions").exists(), "refused before writing anything"
    other = str(next((tmp_path / "runs").glob("*/best.pt")))
    code, _, err = run_cli(predict_main, ["--checkpoint", str(trained.run / "best.pt"), "--report", "--baseline", other],
                           capsys)
    assert code == 2 and err.strip().endswith("is a cifar100 model with 100 classes: the report compares two models "
                                              "of one data set and class list")
    assert not (tmp_path / "submissions").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("ours, baseline, ship_ours", [
    ((0.925, 0.85), (0.930, 0.60), True),    # 0.5 points of clean accuracy for robustness: worth it
    ((0.9249, 0.85), (0.930, 0.60), True),   # 0.51 points: rule 2, half-degraded inputs favour ours
    ((0.9249, 0.602), (0.930, 0.60), False),  # 0.51 points for 0.2 under corruptions: rule 2 keeps the baseline
    ((0.930, 0.60), (0.930, 0.60), True),    # equal: ours (rule 1 holds both ways, ours asked first)
    ((0.934, 0.59), (0.930, 0.60), False),   # cleaner by under 0.5 but less robust: the baseline wins rule 1
    ((0.946, 0.59), (0.930, 0.60), True),    # cleaner by 1.6, 1 point less robust: rule 2, ours
])
def test_choice_between_two_models_at_its_edges(ours, baseline, ship_ours):
    pick, reason = report.choose(dict(clean=ours[0], corrupted=ours[1]), dict(clean=baseline[0], corrupted=baseline[1]))
    assert pick is ship_ours, reason


def test_report_with_a_baseline_held_out_corruptions_and_examples(tmp_path):
    kw = fake_run(tmp_path, 0.9)
    kw["held_out"] = {k: 0.7 for k in report.HELD_OUT}
    kw["baseline"] = dict(name="clean/best.pt (fast_cnn_s)", clean=0.902, corrupted={k: 0.5 for k in report.CORRUPTIONS},
                          held_out={k: 0.6 for k in report.HELD_OUT})
    kw["examples"] = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    path, summary = report.build_vs_buy(tmp_path, **kw)
    text = path.read_text()
    for section in ("## Ours vs the baseline: which model to ship", report.CHOICE_RULE, "**ship ours**",
                    "baseline (clean/best.pt (fast_cnn_s))", "Held out:", "Mean 70.00%", "cifar10_corruptions.png",
                    "std 15 levels", "JPEG quality 30", "motion blur, 5 px streak", "| -0.20 |", "**+30.0**", "**+10.0**"):
        assert section in text, section
    assert (tmp_path / "cifar10_corruptions.png").read_bytes()[:4] == b"\x89PNG"
    assert summary[-2] == "vs baseline clean/best.pt (fast_cnn_s): -0.20 points clean, +30.0 under corruptions; ship ours"
