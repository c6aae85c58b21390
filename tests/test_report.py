import numpy as np
import pandas as pd
import pytest

from cifarkit import report

from conftest import run_cli


def test_wilson_interval_known_value():
    low, high = report.wilson_interval(81, 263)  # Newcombe (1998), Statistics in Medicine 17:857, example
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)


def test_exact_binomial_test_known_values():
    assert report.beats_claim_pvalue(7, 10, 0.5) == pytest.approx(176 / 1024)  # P(X >= 7), X ~ Bin(10, 1/2)
    assert report.beats_claim_pvalue(10, 10, 0.5) == pytest.approx(1 / 1024)


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


def test_weakest_classes_named(tmp_path):
    kw = fake_run(tmp_path, 1.0)
    kw["preds"][kw["labels"] == 3] = 0  # class3 always wrong
    path, summary = report.build_vs_buy(tmp_path, **kw)
    assert "weakest classes: class3 (0.0%)" in summary[2]


def test_corruptions_are_deterministic_and_change_images():
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for name in report.CORRUPTIONS:
        a, b = report.corrupt(images, name), report.corrupt(images, name)
        assert a.shape == images.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, images), name


def test_predict_report_end_to_end(cifar10_dir, train_main, predict_main, capsys, tmp_path):
    code, _, err = run_cli(train_main, ["--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(cifar10_dir),
                                        "--train-per-class", "9", "--val-per-class", "3", "--epochs", "2", "-b", "16"],
                           capsys)
    assert code == 0, err
    code, out, err = run_cli(predict_main, ["--dataset", "cifar10", "--report"], capsys)
    assert code == 0, err
    text = (tmp_path / "reports" / "cifar10_build_vs_buy.md").read_text()
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    truth = pd.read_csv(tmp_path / "data" / "cifar10" / "solution.csv")
    correct = int((sub["label"] == truth["label"]).sum())
    assert f"({correct:,} / 40)" in text
    assert "recommendation:" in out


def test_report_refuses_cifar100(cifar100_dir, train_main, predict_main, capsys, tmp_path):
    code, _, err = run_cli(train_main, ["--model", "simple_cnn", "--data-dir", str(cifar100_dir),
                                        "--train-per-class", "4", "--val-per-class", "1", "--epochs", "1"], capsys)
    assert code == 0, err
    code, out, err = run_cli(predict_main, ["--report"], capsys)
    assert code == 2 and "--report compares with CIFAR-10" in err
    assert not (tmp_path / "submissions").exists(), "refused before writing anything"
