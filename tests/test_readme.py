"""README.md's claims, section by section: a class per section below for the claims no other module tests, and
here a pointer for each claim that another module tests (README section: "claim" -> test).

cifarkit (the top)
- "Offline, give it the files instead (one clear error line tells you which is missing)" -> test_train_predict.py::
  test_train_missing_data_offline, test_offline_hub_without_file_says_what_to_do
- "`--time-budget 600`" (the best model in ten minutes) -> below, TestTraining.
  test_time_budget_fits_the_schedule_and_stops_the_run
- "the CPU has no native bf16 (train.py says so when it starts): take `--model fast_cnn_s_muon`" -> test_speed_recipe.py::
  test_a_cpu_without_native_bf16_is_pointed_at_fast_cnn_s_muon
What it does
- "checked: header, ids, labels in range" -> test_submission.py::test_malformed_files_are_refused
Data
- "or their official `.tar.gz` (extracted with tarfile's `data` filter)" -> test_read.py::
  test_reads_from_official_archive, test_malicious_archive_is_refused, test_archive_link_out_of_target_is_refused
- "downloaded from the official site and checked against the official md5" -> test_read.py::
  test_download_with_wrong_checksum_is_refused_and_removed
- "Offline, you get one line naming the folder and the file names to put there" -> test_read.py::
  test_offline_without_data_says_where_to_put_it
- "`--data-dir` may also point at the `cifar-*-python` folder itself" -> test_read.py::test_reads_cifar100_fine_labels
- "Files are validated on reading (array shapes and dtype, labels in range, labels per image, class names from the meta
  file)" -> test_read.py::test_malformed_batches_are_refused, test_missing_meta_names_the_file,
  test_reads_cifar10_in_official_layout
- "a copy whose `filenames` field differs still loads" -> test_read.py::test_other_filenames_still_load
- "a pickle that carries code is refused" -> test_read.py::test_pickle_with_code_is_refused_without_running_it
The split
- "the same seed gives byte-identical arrays, another seed another membership" -> test_split.py::
  test_same_seed_same_arrays_other_seed_other_members
- "Test is the official test set in official order, `id` 0..N-1, labels hidden (stored as 0)" and the files table ->
  test_split.py::test_counts_hidden_labels_and_files
- "A source with too few images per class is refused with the numbers" -> test_split.py::
  test_too_few_images_per_class_names_the_numbers
- "rebuilds it when asked for other per-class numbers or another split seed" -> test_split.py::
  test_ensure_reuses_or_rebuilds
- "`train.py --seed` is the training seed ... and leaves the split alone" -> test_competition.py::
  test_seeds_share_one_split_and_split_seed_changes_it
- "Every read of the split checks the arrays against the manifest's sha256" -> test_split.py::
  test_damaged_split_is_detected
Training
- "a backbone-only file without the classifier is fine; a file that does not fit the network is refused" ->
  test_models.py::test_backbone_without_classifier_loads, test_file_of_another_network_is_refused
- "`crop_flip` by default (random crop with 4-px padding + horizontal flip, done on whole batches with tensor ops" ->
  test_augment.py::test_crop_and_flip_together_are_windows_or_mirrored_windows
- "`albu`, an albumentations per-image pipeline ... run in `--workers` DataLoader workers" -> test_augment.py::
  test_albumentations_stream_depends_on_seed_epoch_and_worker, test_train_predict.py::
  test_albumentations_in_workers_trains_the_same_run_twice
- "`--aug crop_flip_robust`": its corruptions, their plain-unit ranges, and batches re-made from (seed, epoch, batch)
  under resume and torchrun -> test_robust.py
- "What it writes" (the run folder's files) -> test_train_predict.py::test_train_writes_the_run_folder
- "`deep_cnn` ..., `branch_mix_net` ..., and `resnet18_cifar`" (their designs and parameter counts) ->
  test_scratch_models.py::test_new_models_classify_32px, test_branch_mix_weights_come_from_the_input,
  test_parameter_counts_as_documented, test_one_epoch_and_predict_round_trip
Why this ResNet18 stem
- "real timm and torchvision ImageNet files load unchanged" -> test_models.py::test_real_resnet18_files_load_unchanged
The CIFAR ResNet-18 on a GPU
- "3x3 stride-1 stem, no max-pool, BasicBlocks [2,2,2,2], widths 64-128-256-512, 11.2M parameters" ->
  test_scratch_models.py::test_resnet18_cifar_is_the_standard_one
The speed recipe: fast_cnn_muon
- Muon for the filters at norm sqrt(outputs) (in fp32 where the CPU lacks native bf16), SGD at per-image rates, the
  whitening bias's 3/8, `shift_altflip`, a CPU's chunks of 1000 (`--micro-batch`), exact resume -> test_speed_recipe.py
- `--skip-easy P`: the easier half sits out at rate P from epoch 2, an exact resume, torchrun pooling the losses ->
  test_speed_recipe.py::test_skip_easy_*, test_distributed.py::test_skip_easy_two_processes_leave_out_what_one_does
- the sittings' figures (here and in benchmarks/README.md) are measurements, printed by benchmarks/vs_airbench.py
- "Seed tables ... are one command now" (`time_to_accuracy.py --seeds --compare`) -> test_time_to_accuracy.py
Predicting
- "writes `submissions/submission.csv` ... and checks the file"; "`--score` prints accuracy against `solution.csv`" ->
  test_train_predict.py::test_predict_writes_the_models_argmax_and_scores_it
- "`--label-format name` for class names" -> test_train_predict.py::
  test_label_format_name_maps_each_label_to_its_class_name
- "`--tta` averages with horizontally flipped images (`--tta flip_shift` also with 1-px shifts, six views)" ->
  test_augment.py::test_tta_averages_the_models_outputs_over_its_views, test_tta_views_flip_and_shift
- "`--tta flip_shift_unsure` gives those six views only to the fifth of the images the model is least sure of ...
  ranked over the whole test set" -> test_augment.py::
  test_flip_shift_unsure_gives_the_least_sure_fifth_flip_shift_whatever_the_batches
- a missing split is rebuilt from the checkpoint's settings -> test_train_predict.py::
  test_cifar100_transfer_path_with_saved_resnet18
- "`python -m cifarkit.submission check`" -> test_bad_inputs.py::test_submission_check_cli
Measured
- figures, not behaviours: the `benchmarks/` scripts print them, and no test re-measures them.
The CIFAR-10 build-vs-buy report
- "writes `reports/cifar10_build_vs_buy.md` ... and prints a five-line summary" -> test_report.py::
  test_predict_report_end_to_end
- "a 95% Wilson interval and an exact one-sided binomial test against the vendor's claimed 70%", "a recommendation ...
  made by a rule printed in the report" -> test_report.py::
  test_report_states_our_interval_test_and_rule_for_a_known_count, test_recommendation_rule_at_its_edges,
  test_report_sections_figures_and_regeneration
- "the weakest classes named" -> test_report.py::test_weakest_classes_named
- the corruptions and the held-out ones, each deterministic -> test_report.py::
  test_corruptions_are_deterministic_and_change_images
- "With `--baseline CHECKPOINT`", the held-out table, the picture of each corruption, and the rule that chooses ->
  test_report.py::test_report_with_a_baseline_held_out_corruptions_and_examples,
  test_choice_between_two_models_at_its_edges, test_predict_report_with_a_baseline
- "regenerates byte for byte from the same checkpoint and data" -> test_report.py::
  test_report_sections_figures_and_regeneration
Interrupted runs
- "`last.pt` is written at the end of every epoch (and every `--checkpoint-interval STEPS` steps)", "a resumed run
  continues the same curve", "At most the work since the last save is lost" -> test_resume.py::
  test_kill_9_mid_epoch_then_resume_continues_the_same_curve
- "`python train.py --resume` continues the newest run (or `--resume runs/NAME`)" -> test_resume.py::
  test_resume_newest_and_finished_run
Errors (one line on stderr, exit code 2)
- no data offline, download corrupted -> test_train_predict.py::test_train_missing_data_offline, test_read.py::
  test_download_with_wrong_checksum_is_refused_and_removed
- truncated or corrupted pickle, pickle carrying code, wrong array shape or dtype, label out of range, meta file
  missing, unsafe archive -> test_bad_inputs.py::test_bad_source_data
- fewer labels than images -> test_read.py::test_malformed_batches_are_refused
- too few images per class -> test_train_predict.py::test_train_too_few_per_class
- damaged split arrays -> test_split.py::test_damaged_split_is_detected
- unknown model, pretrained file missing -> test_train_predict.py::test_train_bad_inputs_one_line
- no ImageNet weights offline -> test_train_predict.py::test_offline_hub_without_file_says_what_to_do,
  test_unreachable_hub_fails_at_once_in_one_line
- pretrained file of another network -> test_bad_inputs.py::test_pretrained_file_of_another_network
- weights or checkpoint with pickled code -> test_models.py::test_weights_with_pickled_code_are_refused,
  test_bad_inputs.py::test_bad_checkpoints
- checkpoint truncated, for another model / class count, of another data set -> test_bad_inputs.py::test_bad_checkpoints
- predict with no run; "never a traceback" -> test_train_predict.py::test_scripts_exit_nonzero_with_one_line
- resume without a last.pt, run folder already used -> test_resume.py::test_resume_needs_a_last_checkpoint
- malformed submission CSV -> test_submission.py::test_malformed_files_are_refused, test_bad_inputs.py::
  test_submission_check_cli
- output folder not writable, disk full, "never a half-written file" -> test_atomic.py
"""

import hashlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cifarkit import checkpoint, models, runtime, train

from conftest import ROOT, logits_by_hand, run_cli, write_cifar10

SMALL = ["--dataset", "cifar10", "--train-per-class", "9", "--val-per-class", "3", "--device", "cpu"]


@pytest.fixture
def network_inputs(monkeypatch):
    """What each network train.py builds is fed, recorded by a hook: the batch, whether it was training, and the
    autocast in force."""
    seen = []
    real = models.create

    def create(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(SimpleNamespace(
            x=inputs[0].detach().clone(), training=module.training, autocast=torch.is_autocast_enabled("cpu"),
            dtype=torch.get_autocast_dtype("cpu"))))
        return model

    monkeypatch.setattr(models, "create", create)
    return seen


class TestTheSplit:
    def test_manifest_says_how_the_split_was_made(self, trained):
        """"`manifest.json`: dataset, source, seed, per-class numbers, counts per class, sha256 of each array's
        bytes, class names"."""
        m = json.loads((trained.split / "manifest.json").read_text())
        assert (m["dataset"], m["source"], m["seed"]) == ("cifar10", str(trained.data), 0)
        assert (m["train_per_class"], m["val_per_class"]) == (9, 3)
        assert m["counts"]["train_per_class"] == [9] * 10 and m["counts"]["val_per_class"] == [3] * 10
        for name, digest in m["sha256"].items():
            assert hashlib.sha256(np.load(trained.split / f"{name}.npy").tobytes()).hexdigest() == digest, name
        assert len(m["sha256"]) == 6 and m["classes"][:3] == ["airplane", "automobile", "bird"]


class TestTraining:
    def test_list_models(self, train_main, capsys):
        """"`python train.py --list-models`"; "Models: `simple_cnn` (plain VGG-style baseline, 0.3M parameters),
        `fast_cnn` / `fast_cnn_s` ..., `resnet18` (timm, ImageNet-pretrained by default), and any other timm model
        name"."""
        code, out, err = run_cli(train_main, ["--list-models"], capsys)
        assert code == 0, err
        rows = {line.split()[0]: line for line in out.splitlines()}
        assert {"simple_cnn", "fast_cnn", "fast_cnn_s", "resnet18"} <= set(rows)
        assert "ImageNet-pretrained" in rows["resnet18"] and "scratch" in rows["simple_cnn"]
        assert "any other timm model name" in out.splitlines()[-1]
        assert round(sum(p.numel() for p in models.create("simple_cnn", 10).parameters()) / 1e6, 1) == 0.3

    def test_any_timm_name_trains_and_no_pretrained_starts_from_scratch(self, cifar10_dir, train_main, capsys,
                                                                        monkeypatch):
        """"and any other timm model name"; "`--no-pretrained` to start from scratch" (no hub, no file)."""
        import timm.models._hub as timm_hub

        downloads = []
        monkeypatch.setattr(timm_hub, "hf_hub_download", lambda *a, **k: downloads.append(a))
        code, out, err = run_cli(train_main, [*SMALL, "--data-dir", str(cifar10_dir), "--model", "test_efficientnet",
                                              "--no-pretrained", "--epochs", "1", "-b", "32", "--experiment", "t"],
                                 capsys)
        assert code == 0, err
        assert downloads == [] and json.loads(Path("runs/t/config.json").read_text())["pretrained"] is False
        assert checkpoint.load("runs/t/best.pt")["model"] == "test_efficientnet"

    def test_fast_cnn_s_trains_with_its_own_defaults_and_a_frozen_whitening_stem_set_from_data(
            self, cifar10_dir, train_main, capsys, monkeypatch):
        """"`fast_cnn` / `fast_cnn_s` (airbench-class scratch nets with a patch-whitening stem)"; "Each registry entry
        carries its own defaults (epochs, lr, batch size, augmentation, label smoothing, EMA); flags override them"."""
        stems = []
        real = models.FastNet.init_from_data

        def init_from_data(self, images, *args, **kwargs):
            real(self, images, *args, **kwargs)
            stems.append(self.whiten.weight.detach().clone())

        monkeypatch.setattr(models.FastNet, "init_from_data", init_from_data)
        code, out, err = run_cli(train_main, [*SMALL, "--data-dir", str(cifar10_dir), "--model", "fast_cnn_s",
                                              "--epochs", "2", "-b", "16", "--no-amp", "--experiment", "fast"], capsys)
        assert code == 0, err
        cfg = json.loads(Path("runs/fast/config.json").read_text())
        assert (cfg["epochs"], cfg["batch_size"]) == (2, 16)
        assert {k: cfg[k] for k in ("lr", "weight_decay", "aug", "label_smoothing", "ema")} == \
            {k: v for k, v in models.MODELS["fast_cnn_s"].defaults.items() if k not in ("epochs", "batch_size")}
        assert len(stems) == 1 and stems[0].abs().sum() > 0, "set once, from data"
        for name in ("best.pt", "last.pt"):
            assert torch.equal(checkpoint.load(f"runs/fast/{name}")["state_dict"]["whiten.weight"], stems[0]), name
        log = pd.read_csv("runs/fast/log.csv")
        assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]

    def test_cutout_reaches_the_training_batches_only(self, cifar10_dir, train_main, capsys, network_inputs):
        """"`crop_flip_cutout`" (crop_flip + one 12x12 cutout square per image)."""
        code, out, err = run_cli(train_main, [*SMALL, "--data-dir", str(cifar10_dir), "--model", "simple_cnn",
                                              "--aug", "crop_flip_cutout", "--epochs", "1", "-b", "16"], capsys)
        assert code == 0, err

        def zeroed_pixels(batches):  # cutout sets whole pixels to 0, the mean after normalisation
            return torch.cat([(b.x == 0).all(1).flatten(1).sum(1) for b in batches])

        assert zeroed_pixels(b for b in network_inputs if b.training).min() >= 36  # 12x12, or 6x6 in a corner
        assert zeroed_pixels(b for b in network_inputs if not b.training).max() < 36

    @pytest.mark.parametrize("flag, dtype", [("--amp", torch.bfloat16), ("--no-amp", None)])
    def test_both_precisions_train_with_channels_last(self, cifar10_dir, train_main, capsys, network_inputs, flag,
                                                      dtype):
        """"Device: CUDA when present (`--device` to choose), with mixed precision (`--amp`) and channels_last; on
        CPU, bf16 autocast is on where the CPU has native bf16 ..., and channels_last is on"."""
        code, out, err = run_cli(train_main, [*SMALL, "--data-dir", str(cifar10_dir), "--model", "simple_cnn",
                                              "--epochs", "1", "-b", "16", flag, "--experiment", "p"], capsys)
        assert code == 0, err
        assert json.loads(Path("runs/p/config.json").read_text())["amp"] == ("bfloat16" if dtype else "off")
        steps = [b for b in network_inputs if b.training]
        assert steps and all(b.autocast == (dtype is not None) for b in steps)
        assert dtype is None or all(b.dtype == dtype for b in steps)
        assert all(b.x.is_contiguous(memory_format=torch.channels_last) for b in network_inputs)
        assert np.isfinite(pd.read_csv("runs/p/log.csv")["train_loss"]).all()

    @pytest.mark.parametrize("native", [True, False])
    def test_bf16_autocast_by_default_only_on_cpus_with_native_bf16(self, monkeypatch, native):
        """"on CPU, bf16 autocast is on where the CPU has native bf16 (AVX512-BF16 or AMX)"."""
        cpu = torch.device("cpu")
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
        assert runtime.amp_dtype(cpu) == (torch.bfloat16 if native else None)
        assert runtime.amp_dtype(cpu, True) == torch.bfloat16 and runtime.amp_dtype(cpu, False) is None
        monkeypatch.undo()
        flags = ["avx512_bf16", "amx_bf16"] if native else ["avx512f avx2"]
        for flag in flags:
            monkeypatch.setattr(runtime, "_cpuinfo", lambda: f"processor\t: 0\nflags\t\t: fpu sse2 {flag}\n")
            assert runtime.cpu_has_native_bf16() is native

    def test_inputs_normalised_with_the_training_splits_mean_and_std(self, trained):
        """"Inputs are normalised with the training split's mean and std"."""
        train_images = np.load(trained.split / "train_images.npy") / 255
        cfg = json.loads((trained.run / "config.json").read_text())
        assert np.allclose(cfg["mean"], train_images.mean((0, 1, 2)))
        assert np.allclose(cfg["std"], train_images.std((0, 1, 2)))
        assert checkpoint.load(trained.run / "best.pt")["mean"] == cfg["mean"]

    def test_time_budget_fits_the_schedule_and_stops_the_run(self, tmp_path, train_main, capsys):
        """"`--time-budget SECONDS` fits the learning-rate schedule to a wall-clock budget instead of `--epochs`":
        a linear warm-up, then down to zero exactly at the budget, where the run stops (at most one step later).
        Also "What it writes, in `runs/<dataset>-<model>-<date-time>/`"."""
        grid = np.linspace(0, 1, 1001)
        factor = np.array([train.lr_factor(p) for p in grid])
        peak = int(factor.argmax())
        assert factor[0] == 0 and factor[peak] == pytest.approx(1) and factor[-1] == 0 and 0 < grid[peak] <= 0.5
        assert (np.diff(factor[:peak + 1]) > 0).all() and (np.diff(factor[peak:]) < 0).all()
        assert np.allclose(np.diff(factor[:peak + 1], 2), 0) and np.allclose(np.diff(factor[peak:], 2), 0)

        data = write_cifar10(tmp_path / "src", train_per_class=30)
        budget, batch, lr = 1.5, 50, 0.05  # steps of about 0.1 s here, well above a shared machine's jitter
        code, out, err = run_cli(train_main, [
            "--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(data), "--train-per-class", "25",
            "--val-per-class", "5", "--time-budget", str(budget), "-b", str(batch), "--lr", str(lr),
            "--device", "cpu"], capsys)
        assert code == 0, err
        [run] = Path("runs").iterdir()
        assert re.fullmatch(r"cifar10-simple_cnn-\d{8}-\d{6}", run.name)
        log = pd.read_csv(run / "log.csv")
        step = batch / log["images_per_s"].min()  # the slowest epoch's seconds per step
        slack = 2 * step  # the step under way when the budget runs out, doubled for a shared machine's jitter
        assert budget - 0.005 <= log["train_seconds"].iloc[-1] <= budget + slack
        assert log["lr"].iloc[-1] <= lr * train.lr_factor(1 - slack / budget), "the last step ran at nearly zero"

    def test_model_ema_is_what_is_evaluated_and_saved(self, cifar10_dir, train_main, capsys):
        """"Each registry entry carries its own defaults (..., EMA); flags override them" (`--model-ema`): validation,
        best.pt and last.pt use the moving average of the weights, and training itself is unchanged."""
        runs = {"plain": "--no-model-ema", "ema": "--model-ema"}
        for name, flag in runs.items():
            code, out, err = run_cli(train_main, [*SMALL, "--data-dir", str(cifar10_dir), "--model", "simple_cnn",
                                                  "--epochs", "2", "-b", "16", "--no-amp", flag, "--experiment", name],
                                     capsys)
            assert code == 0, err
        logs = {name: pd.read_csv(f"runs/{name}/log.csv") for name in runs}
        assert logs["ema"]["train_loss"].tolist() == logs["plain"]["train_loss"].tolist()
        assert logs["ema"]["val_loss"].iloc[-1] != pytest.approx(logs["plain"]["val_loss"].iloc[-1], rel=1e-3)
        images, labels = (np.load(f"data/cifar10/val_{kind}.npy") for kind in ("images", "labels"))
        for name, log in logs.items():
            val_loss = F.cross_entropy(logits_by_hand(f"runs/{name}/last.pt", images), torch.from_numpy(labels)).item()
            assert val_loss == pytest.approx(log["val_loss"].iloc[-1], rel=1e-4), name

    def test_what_it_prints(self, trained):
        """"What it prints: the set-up (what trains where; the input size and normalisation), a progress bar per
        epoch (on a terminal), then a line per epoch" in the README's format; not on a terminal, no bar."""
        example = next(line.strip() for line in (ROOT / "README.md").read_text().splitlines()
                       if line.strip().startswith("epoch "))
        epoch_line = re.sub(r"\d+", r"\\d+", re.escape(example))
        lines = trained.stdout.splitlines()
        assert lines[0].startswith("built cifar10 split") and lines[1].startswith("training simple_cnn on cifar10")
        assert lines[2] == "inputs 32 px, normalised with the training split's mean/std"
        assert all(re.fullmatch(epoch_line, line) for line in lines[3:7]), lines[3:7]
        assert lines[7].startswith("done: best val acc") and len(lines) == 8


class TestWhyThisResNet18Stem:
    def test_a_32px_image_keeps_a_16x16_map_after_the_stem(self):
        """"Dropping the max-pool wins at equal time here and keeps conv1 as it is" (models.resnet18: "32-px inputs
        keep a 16x16 map after it")."""
        model = models.create("resnet18", 10)
        sizes = []
        model.layer1.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[-2:])))
        model(torch.zeros(1, 3, 32, 32))
        assert sizes == [(16, 16)] and model.conv1.stride == (2, 2) and model.conv1.kernel_size == (7, 7)


class TestPredicting:
    def test_newest_run_and_newest_run_of_one_dataset(self, trained, predict_main, capsys):
        """"`predict.py` takes the newest run's `best.pt` (`--checkpoint` to choose, `--dataset` for the newest run of
        one data set)"."""
        ckpt = torch.load(trained.run / "best.pt", weights_only=True)
        for name, dataset, mtime in (("old", "cifar10", 1e9 - 200), ("newer", "cifar10", 1e9 - 100),
                                     ("newest-cifar100", "cifar100", 1e9)):
            Path(f"runs/{name}").mkdir(parents=True)
            torch.save(dict(ckpt, dataset=dataset), f"runs/{name}/best.pt")
            os.utime(f"runs/{name}/best.pt", (mtime, mtime))
        for argv, chosen in (([], "newest-cifar100"), (["--dataset", "cifar10"], "newer"),
                             (["--checkpoint", "runs/old/best.pt"], "old")):
            code, out, err = run_cli(predict_main, argv, capsys)
            assert code == 0, err
            assert f"from runs/{chosen}/best.pt" in out, argv


class TestDevelopment:
    def test_tests_read_nothing_from_the_users_home(self, request):
        """"Tests write their own tiny CIFAR-format data (official pickle layout) in a temporary folder; they need
        neither `../shared` nor the network" -- nor the user's home: every cache the libraries read (hub weights,
        torch hub, matplotlib) points into the empty temporary home conftest.py made."""
        import huggingface_hub.constants
        import matplotlib

        home = request.config.cifarkit_home[0].resolve()
        for path in (Path.home(), huggingface_hub.constants.HF_HUB_CACHE, torch.hub.get_dir(),
                     matplotlib.get_cachedir(), matplotlib.get_configdir()):
            assert Path(path).resolve().is_relative_to(home), path
