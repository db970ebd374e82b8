"""Training: AdamW on the trainable parts, warmup + cosine, clipping, accumulation, bf16 on CUDA,
periodic validation, metrics files, atomic checkpoints and bit-identical resume.

One CPU, one GPU or many: the same code runs under Hugging Face Accelerate, so
``accelerate launch -m flamingo_lib.cli.train ...`` trains data-parallel (the frozen parts hold no
gradients, so DDP never synchronises them).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flamingo_lib.training.checkpoint import (
    CHECKPOINT_FILE,
    PICKLED_CHECKPOINT_FILE,
    checkpoint_record,
    load_training_state,
    save_training_state,
)
from flamingo_lib.labeling.targets import FindingTargets
from flamingo_lib.processing.prompts import shots_text
from flamingo_lib.processes import launched_world_size, leave_group_at_exit
from flamingo_lib.training.optimisation import adamw, lr_schedule, parameter_groups
from flamingo_lib.training.sampling import epoch_order, repeat_factors, study_labels
from flamingo_lib.training.config import TrainConfig
from flamingo_lib.io import atomic_path, write_json_atomic

__all__ = ["ReportCollator", "TrainConfig", "Trainer"]

#: Settings a resume may change: how long, how often to evaluate or save, how visibly, and where.
RESUMABLE_CHANGES = frozenset({"max_steps", "eval_every", "save_every", "eval_batches", "progress", "compile",
                               "compile_step", "pad_to_multiple_of", "log_every", "max_nonfinite",
                               "gradient_checkpointing", "out_dir", "overwrite"})

#: (B, L) text tensors of a batch and what fills their bucket padding: no token, no attention, no loss.
TEXT_PADDING = {"attention_mask": 0, "media_locations": 0, "labels": -100}


class ReportCollator:
    """CXRSamples -> a training batch (labels included), from pixels or from cached features;
    with ``finding_targets`` (:class:`~flamingo_lib.labeling.targets.FindingTargets`), also the
    findings head's ``finding_labels`` (B, K), from the source ``findings_targets`` names
    (:meth:`~flamingo_lib.labeling.targets.FindingTargets.for_samples`), followed by the labeler's reading
    of each report when ``reading_targets`` (a model with a reading head; the Trainer sets it).

    ``pad_to_multiple_of`` (the Trainer sets its config's): the text tensors (B, L) are padded on
    the right to L rounded up to a multiple of it (at most ``max_length``, the LM's positions), so a
    compiled step sees a few lengths, not one per batch; padding is ``pad_token_id`` with attention
    0 and label -100, so the loss is the unpadded batch's up to float rounding."""

    def __init__(self, processor: Any, feature_cache: Any = None, finding_targets: Any = None,
                 shots: Callable[[Any], Sequence[Any]] | None = None) -> None:
        self.processor, self.feature_cache, self.finding_targets = processor, feature_cache, finding_targets
        # in-context examples of each study (e.g. :func:`~flamingo_lib.training.sampling.random_shots`): studies
        # with their reports put before it, so that the model learns to read interleaved studies
        self.shots = shots
        self.findings_targets = "labels"  # the Trainer sets its config's TrainConfig.findings_targets
        self.reading_targets = False  # the Trainer sets the model's FlamingoConfig.reading_head
        # the Trainer sets it when the prior's findings tokens are teacher-forced: the batch then holds
        # ``prior_finding_labels`` (B, K), the prior study's targets, NaN rows for a study without one
        self.prior_targets = False
        self.prior_source: str | None = None  # the prior's targets' source (None: findings_targets)
        # the Trainer sets the model's FlamingoConfig.severity_head: the targets (and the prior's) then
        # end with the severities each report states (NaN where it states none)
        self.severity_targets = False
        self.with_reports = False  # the reward stage sets it: the batch then also holds the reports and prompts
        self.pad_to_multiple_of: int | None = None
        self.max_length: int | None = None  # the Trainer sets the LM's positions: buckets never pass them

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        # each study's prompt with the processor's context (indication, prior study), its films in
        # the order of the prompt's <image> tokens
        inputs = [self.processor.study_inputs(s) for s in samples]
        images, prompts = [x.images for x in inputs], [x.prompt for x in inputs]
        if self.shots is not None:  # Flamingo's few-shot format; the loss is the study's own report's
            config = self.processor.config
            for i, sample in enumerate(samples):
                examples = list(self.shots(sample))
                prompts[i] = shots_text(examples, self.processor.prompt, config.image_token, config.eoc_token) + prompts[i]
                images[i] = [im for ex in examples for im in ex.images] + images[i]
        batch = self.processor.training_batch([s.report for s in samples], images, prompts)
        if self.pad_to_multiple_of:
            batch = self.bucket_padded(batch)
        if self.feature_cache is not None:
            batch.pop("pixel_values")
            batch["image_embeddings"] = self.feature_cache.stack(images)
        if self.finding_targets is not None:
            targets = self.finding_targets.with_readings if self.reading_targets else self.finding_targets.for_samples
            batch["finding_labels"] = targets(samples, self.findings_targets)
            if self.severity_targets:  # the stated severities last
                batch["finding_labels"] = torch.cat([batch["finding_labels"], self.finding_targets.severities(samples)], 1)
            if self.prior_targets:
                batch["prior_finding_labels"] = self.prior_labels(samples)
        batch["ids"] = [s.id for s in samples]
        if self.with_reports:
            batch["reports"] = [s.report for s in samples]
            batch["prompts"] = [x.prompt for x in inputs]
        return batch

    def prior_labels(self, samples: Sequence[Any]) -> torch.Tensor:
        """(B, K): each study's prior study's findings targets (the same source as its own), a row
        of NaN for a study without a prior; (B, 2K) with ``severity_targets``, the prior's report's
        severities after them."""
        k = len(self.finding_targets.observations)
        priors = [i for i, s in enumerate(samples) if getattr(s, "prior", None) is not None]
        rows = torch.full((len(samples), 2 * k if self.severity_targets else k), float("nan"))
        if priors:
            source = self.prior_source or self.findings_targets
            earlier = [samples[i].prior for i in priors]
            rows[priors, :k] = self.finding_targets.for_samples(earlier, source)
            if self.severity_targets:
                rows[priors, k:] = self.finding_targets.severities(earlier)
        return rows

    def bucket_padded(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its (B, L) text tensors (input_ids, attention_mask, media_locations, labels)
        right-padded to (B, L'), L' = L rounded up to a multiple of ``pad_to_multiple_of`` (capped at
        ``max_length``; a batch already past it is left as it is, for the model to refuse)."""
        length = batch["input_ids"].shape[1]
        multiple = self.pad_to_multiple_of
        target = -(-length // multiple) * multiple
        if self.max_length is not None:
            target = max(min(target, self.max_length), length)
        if target == length:
            return batch
        pad_id = self.processor.tokenizer.pad_token_id
        fills = {"input_ids": 0 if pad_id is None else pad_id, **TEXT_PADDING}
        return {k: torch.nn.functional.pad(v, (0, target - length), value=fills[k]) if k in fills else v
                for k, v in batch.items()}


class Trainer:
    """Trains a ``FlamingoModel`` on a train set, validating on a val set.

    Args:
        model: the model; only its trainable parameters are optimised.
        train_set, val_set: sequences of ``CXRSample`` (anything with ``.images``, ``.report``, ``.id``).
        collator: builds batches (see :class:`ReportCollator`).
        config: :class:`TrainConfig`.
        record: how the run was set up (e.g. the pipeline's training key), written with the
            config into ``summary.json`` under ``config.extra``.
        num_workers: processes that load and collate the coming batches (films decoded, features read)
            while the model trains on the current one; 0 does it between steps. The batches, and so
            the run, are the same either way.

    Host syncs of a step. What :meth:`fit` runs per step queues work on the device without
    waiting for it, except one read: whether the step's loss was finite everywhere
    (:meth:`_finite_everywhere`, one ``bool`` per step, after every micro-batch's backward), because
    a non-finite step must not update the weights, advance the schedule or count as a step, and
    the host decides that. The losses logged per step stay on the device until a log point
    (``log_every``; by default each evaluation and checkpoint), where one read fetches them all.
    The model's forward has reads of its own (the checks of its ``<image>`` tokens against the images,
    the findings head's image counts: ``docs/training.md``). With ``compile_step`` the forward and
    loss are one ``torch.compile`` function (AOTAutograd compiles their backward too), split where
    those reads are.
    """

    def __init__(self, model: Any, train_set: Sequence[Any], val_set: Sequence[Any] | None,
                 collator: ReportCollator, config: TrainConfig, record: dict[str, Any] | None = None,
                 num_workers: int = 0) -> None:
        from accelerate import Accelerator

        self.config, self.num_workers = config, num_workers
        self.record = record or {}
        use_bf16 = torch.cuda.is_available() if config.bf16 is None else config.bf16
        # Launched as several processes (torchrun, accelerate launch) on a machine without CUDA: Accelerate
        # joins them through gloo only when told the run is on CPU; otherwise each process would train
        # alone on its own batches and overwrite the others' checkpoints.
        many = launched_world_size() > 1
        self.accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no",
                                       cpu=many and not torch.cuda.is_available())
        if many:
            leave_group_at_exit()
        if config.gradient_checkpointing:
            model.flamingo.lm.gradient_checkpointing_enable()
        if config.compile:
            from flamingo_lib.modeling.compile import compile_blocks

            compile_blocks(model)
        # what one micro-batch's loss is computed by: compiled as one function with compile_step
        self._step_loss = self._batch_loss
        if config.compile_step:
            if type(self)._batch_loss is not Trainer._batch_loss:
                raise ValueError(f"compile_step compiles the supervised step; {type(self).__name__} computes its "
                                 "loss another way (e.g. sampling reports): train it without compile_step")
            # default dynamic shapes: the first length compiles a static graph, the second one a graph
            # with a dynamic length that serves every further bucket
            self._step_loss = torch.compile(self._batch_loss)
        self.train_set, self.val_set, self.collator = train_set, val_set, collator
        collator.pad_to_multiple_of = config.pad_to_multiple_of
        collator.max_length = getattr(model, "max_positions", None)
        context = getattr(collator.processor, "context", None)
        if context is not None and context.uses_prior:  # before minutes of training, not after them
            from flamingo_lib.processing.context import missing_context

            problem = missing_context([train_set[i] for i in range(min(16, len(train_set)))], context)
            if problem:
                raise ValueError(problem)
        if config.findings_loss_weight:
            if model.config.findings_head is None:
                raise ValueError(f"findings_loss_weight={config.findings_loss_weight} but the model has no findings "
                                 "head: build it with FlamingoConfig(findings_head=[observation names])")
            if collator.finding_targets is None:  # the labeler, for reports (and studies without labels)
                collator.finding_targets = FindingTargets(model.config.findings_head)
            collator.findings_targets = config.findings_targets
            collator.reading_targets = model.config.reading_head
            collator.severity_targets = model.config.severity_head
        if config.findings_tokens_teacher and not (config.findings_loss_weight and model.config.findings_tokens):
            raise ValueError(f"findings_tokens_teacher={config.findings_tokens_teacher} but the model reads no findings "
                             "tokens: build it with FlamingoConfig(findings_tokens=True) and a findings_loss_weight > 0")
        readings_taught = config.findings_tokens_teacher and config.findings_tokens_teacher_targets == "readings"
        if readings_taught and not model.config.reading_head:
            raise ValueError("findings_tokens_teacher_targets='readings' teaches the tokens the labeler's reading of "
                             "each report, which the collator gives a model with a reading head only: build it with "
                             "FlamingoConfig(reading_head=True)")
        # the prior's tokens are taught with the study's: the same drawn studies read both targets,
        # from the same source (the prior's report's reading when the study's is)
        collator.prior_targets = bool(config.findings_tokens_teacher and model.config.prior_findings_tokens)
        collator.prior_source = "reports" if readings_taught else None
        self.repeat_factors = (None if config.repeat_factor_threshold is None
                               else repeat_factors(study_labels(train_set), config.repeat_factor_threshold))
        torch.manual_seed(config.seed)
        if not list(model.parameters_trainable()):
            raise ValueError("the model has no trainable parameters")
        self.optimiser = adamw(
            parameter_groups(model, config.lr, config.weight_decay, config.gate_lr_mult, config.ff_gate_lr_mult),
            config.lr, self.accelerator.device)
        self.scheduler = lr_schedule(self.optimiser, config)
        self.model, self.optimiser = self.accelerator.prepare(model, self.optimiser)
        self.out_dir = Path(config.out_dir)
        self.progress: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "history": [], "nonfinite": []}
        self.resumed = False
        # what a subclass logs per step beside the losses (metrics.csv columns, filled by _batch_loss)
        self.extra_metrics: tuple[str, ...] = ()
        self.step_logs: dict[str, float] = {}

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    # -------------------------------------------------------------------------- batches
    def _next_indices(self) -> list[int]:
        """The next batch's sample indices for this process; advances the data position."""
        epoch, position, indices = next(self._batch_plan(self.progress["epoch"], self.progress["position"]))
        self.progress["epoch"], self.progress["position"] = epoch, position
        return indices

    def _batch_plan(self, epoch: int, position: int) -> Iterator[tuple[int, int, list[int]]]:
        """Every coming batch of this process from data position (``epoch``, ``position``) on: the epoch and
        position after it, and its sample indices. A batch that would run past the epoch's order starts
        the next epoch instead (the order's tail is dropped)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_step = self.config.batch_size * world
        while True:
            order = self._epoch_order(epoch)
            if position + per_step > len(order):
                epoch, position = epoch + 1, 0
                order = self._epoch_order(epoch)
            yield epoch, position + per_step, order[position:position + per_step][rank::world]
            position += per_step

    def _epoch_order(self, epoch: int) -> list[int]:
        """:func:`epoch_order` of ``epoch``, drawn once per epoch (25 ms a draw with repeat factors at
        MIMIC-CXR's size: minutes over a run if drawn at every step)."""
        if getattr(self, "_order", (None,))[0] != epoch:
            self._order = (epoch, epoch_order(len(self.train_set), self.config.seed, epoch, self.repeat_factors))
        return self._order[1]

    def _prefetched_batches(self) -> Iterator[dict[str, Any]]:
        """Collated batches of :meth:`_batch_plan`, made by ``num_workers`` processes ahead of need
        (pinned memory on CUDA, for an asynchronous copy)."""
        from torch.utils.data import DataLoader

        # the batches _next_indices will name, from the current position on, without moving it: the loader
        # runs ahead of the training, and the checkpoint records what was trained on
        plan = (indices for _, _, indices in self._batch_plan(self.progress["epoch"], self.progress["position"]))
        loader = DataLoader(self.train_set, batch_sampler=plan, collate_fn=self.collator,
                            num_workers=self.num_workers, pin_memory=self.accelerator.device.type == "cuda",
                            prefetch_factor=2, persistent_workers=False)
        return iter(loader)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean token loss over the validation set (or its first ``eval_batches`` batches)."""
        if not self.val_set:
            return float("nan")
        self.model.eval()
        total, tokens = 0.0, 0
        size = self.config.batch_size
        starts = list(range(0, len(self.val_set), size))[: self.config.eval_batches]
        for start in starts:
            batch = self._to_device(self.collator([self.val_set[i] for i in range(start, min(start + size, len(self.val_set)))]))
            batch.pop("ids")
            batch.pop("reports", None)
            batch.pop("prompts", None)
            batch.pop("finding_labels", None)  # the LM loss only: the head's loss would be computed for nothing
            batch.pop("prior_finding_labels", None)
            with self.accelerator.autocast():
                loss = self.model(**batch, loss_reduction="sum").loss
            total += float(loss)
            tokens += int((batch["labels"][:, 1:] != -100).sum())
        self.model.train()
        return total / max(tokens, 1)

    # ------------------------------------------------------------------------------ loop
    def resume(self) -> None:
        """Continue from ``out_dir/checkpoint.safetensors``: weights, optimiser, schedule, RNG, data position.

        Raises:
            ValueError: a setting differs from the checkpoint's, other than those that only say
                how long or how visibly to train (:data:`RESUMABLE_CHANGES`); the message names each.
        """
        # the settings from the checkpoint's metadata alone: its tensors are read once, below
        # (no readable checkpoint: load_training_state says why)
        saved = (checkpoint_record(self.out_dir) or {"settings": {}})["settings"]
        current = asdict(self.config)
        changed = sorted(k for k in current if k in saved and k not in RESUMABLE_CHANGES and saved[k] != current[k])
        if changed:
            raise ValueError(f"{self.out_dir / CHECKPOINT_FILE}: the run was trained with other settings; a resume "
                             "would continue its schedule under these: "
                             + ", ".join(f"{k} {saved[k]!r} -> {current[k]!r}" for k in changed)
                             + " (resume with the same settings, or start a new run with --overwrite)")
        self.progress = load_training_state(self.out_dir, self.unwrapped, self.optimiser, self.scheduler)
        self.resumed = True

    @property
    def tensorboard(self) -> Any:
        """A TensorBoard writer in ``out_dir/tensorboard`` when tensorboard is installed, else None."""
        if not hasattr(self, "_tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional: metrics.csv always has everything
                self._tensorboard = None
        return self._tensorboard

    def _write_metrics(self, row: dict[str, Any]) -> None:
        self.progress["history"].append(row)
        if not self.accelerator.is_main_process:
            return
        if self.tensorboard is not None:
            for key in ("train_loss", "val_loss", "findings_loss", "lr", "samples_per_s"):
                if row.get(key) is not None:
                    self.tensorboard.add_scalar(key, row[key], row["step"])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.csv"
        fields = ["step", "epoch", "train_loss", "val_loss", "lr", "samples_per_s", *self.extra_metrics]
        if self.config.findings_loss_weight:  # only then: a run resumed from before it keeps its columns
            fields.insert(4, "findings_loss")
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k) for k in fields})

    def _refuse_to_replace_a_run(self) -> None:
        """A new run into an ``out_dir`` that holds one would replace its checkpoint, metrics and
        model: only with ``overwrite``."""
        previous = [name for name in (CHECKPOINT_FILE, PICKLED_CHECKPOINT_FILE, "summary.json", "model")
                    if (self.out_dir / name).exists()]
        if previous and not self.config.overwrite:
            raise FileExistsError(f"{self.out_dir} holds a training run ({', '.join(previous)}): continue it with "
                                  "--resume (Trainer.resume), or replace it with --overwrite (TrainConfig.overwrite)")

    def _drop_metrics_after(self, step: int) -> None:
        """Forget ``metrics.csv`` rows past ``step``: a fresh run (step 0) into a used ``out_dir``
        starts a new file, and a resumed one drops what was logged after its checkpoint (it is
        about to log those steps again)."""
        path = self.out_dir / "metrics.csv"
        if not self.accelerator.is_main_process or not path.exists():
            return
        with path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
        if not rows:
            path.unlink()
            return
        with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``; returns the summary also written to ``out_dir/summary.json``.

        Raises:
            FloatingPointError: the loss was NaN/inf on more than ``max_nonfinite`` batches; the
                message names the step and the sample ids of the offending batches.
        """
        cfg = self.config
        if not self.resumed:
            self._refuse_to_replace_a_run()
        self._drop_metrics_after(self.progress["step"])
        self.model.train()
        bar = tqdm(total=cfg.max_steps, initial=self.progress["step"], disable=not cfg.progress, desc="training")
        window_start, window_samples = time.perf_counter(), 0
        world = self.accelerator.num_processes
        batches = self._prefetched_batches() if self.num_workers else None
        pending: list[dict[str, Any]] = []  # the steps since the last log point, their losses on the device
        # On an accelerator the model's input checks would each read the device at every step: the
        # processor built and checked these batches, so the steps skip them (back on for other calls)
        checking = getattr(self.unwrapped, "check_inputs", None)
        if checking is not None:
            self.unwrapped.check_inputs = checking and self.accelerator.device.type == "cpu"
        try:
            while self.progress["step"] < cfg.max_steps:
                # per micro-batch, on the device: the LM loss (summed over processes), the findings loss
                # (their mean), and whether the loss was finite
                lm_losses, findings_losses, finite, ids_seen = [], [], None, []
                for micro in range(cfg.grad_accum):
                    indices = self._next_indices()
                    batch = self._to_device(next(batches) if batches is not None
                                            else self.collator([self.train_set[i] for i in indices]))
                    ids_seen += batch.pop("ids")
                    sync = micro == cfg.grad_accum - 1
                    context = self.accelerator.no_sync(self.model) if not sync else nullcontext()
                    with context, self.accelerator.autocast():
                        total, lm_loss, findings = self._step_loss(batch, indices)
                        loss = total / cfg.grad_accum
                    if findings is not None:
                        findings_losses.append(self._mean_over_processes(findings.detach()))
                    # a non-finite micro-batch is backpropagated too (its gradients are dropped below):
                    # deciding before its backward would read the device at every micro-batch
                    finite_here = torch.isfinite(loss.detach())
                    finite = finite_here if finite is None else finite & finite_here
                    self.accelerator.backward(loss)
                    # the LM loss, comparable to val_loss (under many processes: the whole global batch's)
                    lm_losses.append(self.accelerator.reduce(lm_loss.detach(), "sum") if world > 1
                                     else lm_loss.detach())
                    window_samples += len(batch["labels"]) * self.accelerator.num_processes
                if not self._finite_everywhere(finite):  # the step's one read of the device (class docstring)
                    if world > 1:  # every process's ids, so the message names the whole batch
                        from accelerate.utils import gather_object

                        ids_seen = gather_object(ids_seen)
                    self.optimiser.zero_grad(set_to_none=True)
                    self.progress["nonfinite"].append({"step": self.progress["step"], "ids": ids_seen})
                    if len(self.progress["nonfinite"]) > cfg.max_nonfinite:
                        raise FloatingPointError(
                            f"non-finite loss at step {self.progress['step']} on samples {ids_seen} "
                            f"({len(self.progress['nonfinite'])} such batches; max_nonfinite={cfg.max_nonfinite}). "
                            "Check those samples' reports and images, lower the learning rate, or use fp32."
                        )
                    continue
                self.accelerator.clip_grad_norm_(self.unwrapped.parameters_trainable(), cfg.max_grad_norm)
                self.optimiser.step()
                self.scheduler.step()
                self.optimiser.zero_grad(set_to_none=True)
                self.progress["step"] += 1
                step = self.progress["step"]
                elapsed = time.perf_counter() - window_start
                row = {"step": step, "epoch": self.progress["epoch"], "train_loss": lm_losses,
                       "lr": self.scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9)}
                if cfg.findings_loss_weight:
                    row["findings_loss"] = findings_losses
                row |= self.step_logs
                self.step_logs = {}
                pending.append(row)
                evaluate = step % cfg.eval_every == 0 or step == cfg.max_steps
                save = step % cfg.save_every == 0 or step == cfg.max_steps
                if evaluate or save or (cfg.log_every is not None and step % cfg.log_every == 0):
                    if evaluate:
                        row["val_loss"] = self.validation_loss()
                    rows, pending = pending, []
                    self._log_rows(rows, bar)
                bar.update(1)
                if save:  # after the rows: the checkpoint holds the history up to its step
                    self.save()
                window_start, window_samples = time.perf_counter(), 0
        except BaseException:
            # the steps trained before the failure still reach metrics.csv (as when each was written
            # as it ended); a failure while writing them must not hide the first one
            try:
                self._log_rows(pending, bar)
            except Exception:  # noqa: BLE001
                pass
            raise
        finally:
            if checking is not None:
                self.unwrapped.check_inputs = checking
            bar.close()
            del batches  # shuts the workers down
        return self._summary()

    def _log_rows(self, rows: list[dict[str, Any]], bar: Any) -> None:
        """Write the metrics of ``rows`` (the steps since the last log point, in order) to metrics.csv
        and TensorBoard, the last one's loss to the progress bar. Their losses, () tensors on the
        device (a list per micro-batch for train_loss and findings_loss; any tensor a subclass put in
        ``step_logs``), are read in one transfer, then combined as floats exactly as each step's
        were before they stayed on the device: train_loss sums each micro-batch's LM loss / processes
        / grad_accum, findings_loss each one's (process mean) / grad_accum."""
        if not rows:
            return
        cfg, world = self.config, self.accelerator.num_processes

        def on_device(value: Any) -> bool:
            return torch.is_tensor(value) or (isinstance(value, list) and all(map(torch.is_tensor, value)))

        slots = [(row, key) for row in rows for key, value in row.items() if on_device(value)]
        tensors = [t.detach().float().reshape(()) for row, key in slots
                   for t in (row[key] if isinstance(row[key], list) else [row[key]])]
        values = iter(torch.stack(tensors).tolist() if tensors else [])  # one read of the device for all
        for row, key in slots:
            if not isinstance(row[key], list):
                row[key] = next(values)
                continue
            divide = world if key == "train_loss" else 1
            total = 0.0
            for _ in row[key]:
                value = next(values)
                total += (value / divide if divide > 1 else value) / cfg.grad_accum
            row[key] = total
        for row in rows:
            self._write_metrics(row)
        last = rows[-1]
        bar.set_postfix(loss=f"{last['train_loss']:.3f}", samples_per_s=f"{last['samples_per_s']:.1f}")

    def _batch_loss(self, batch: dict[str, Any], indices: Sequence[int]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The loss to minimise on one (micro-)batch of the samples at ``indices``, the LM loss (logged,
        comparable to ``val_loss``) and the findings head's (None without it)."""
        prior_labels = batch.get("prior_finding_labels")  # the trainer's, not the model's input
        batch = {key: value for key, value in batch.items() if key != "prior_finding_labels"}
        if self.config.findings_tokens_teacher:
            taught = self._teacher_findings(batch["finding_labels"], prior_labels)
            batch = batch | {"token_findings": taught[0]}
            if prior_labels is not None:
                batch["token_prior_findings"] = taught[1]
        if self.accelerator.num_processes > 1:
            out, lm_loss = self._global_token_mean(batch)
        else:
            out = self.model(**batch)
            lm_loss = out.loss
        if not self.config.findings_loss_weight:
            return lm_loss, lm_loss, None
        # the findings loss is a mean over studies: every process has as many
        return lm_loss + self.config.findings_loss_weight * out.findings_loss, lm_loss, out.findings_loss

    def _teacher_findings(self, finding_labels: torch.Tensor, prior_labels: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K): the findings targets of a ``findings_tokens_teacher`` share of the studies (or, with
        ``findings_tokens_teacher_targets="readings"``, the reading head's: the labeler's reading of
        each report), drawn from the RNG a checkpoint saves (a resumed run draws the same), NaN for
        the rest (their tokens are the head's); and the same studies' prior targets from
        ``prior_labels`` (B, K), which the collator reads from the same source. With a severity head
        both are (B, 2K): the severities the reports state after the findings."""
        k = len(self.unwrapped.config.findings_head)  # a reading head's targets follow the K findings
        chosen = (torch.rand(finding_labels.shape[0]) < self.config.findings_tokens_teacher)[:, None]
        chosen = chosen.to(finding_labels.device)
        readings = self.config.findings_tokens_teacher_targets == "readings"
        taught = finding_labels[:, k:2 * k] if readings else finding_labels[:, :k]
        severity = self.unwrapped.config.severity_head
        if severity:  # the stated severities too (NaN where unstated: the head's stand)
            taught = torch.cat([taught, finding_labels[:, -k:]], 1)
        nan = torch.full_like(taught.float(), float("nan"))
        own = torch.where(chosen, taught.float(), nan)
        prior = None
        if prior_labels is not None:
            prior_taught = prior_labels[:, :2 * k] if severity else prior_labels[:, :k]
            prior = torch.where(chosen, prior_taught.float().to(nan), nan)
        return own, prior

    def _global_token_mean(self, batch: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        """The model's output on this process's part of the batch, and its LM loss scaled so that
        DDP's mean over processes of the gradients is the gradient of the mean over *all* the global
        batch's label tokens, as one process with the whole batch computes it (each process's own
        mean would weigh a token of a short report in a process with few tokens more).

        Returns:
            (output, this process's token-loss sum x processes / the global batch's label tokens).
        """
        tokens = (batch["labels"][:, 1:] != -100).sum()
        total = self.accelerator.reduce(tokens.detach().clone(), "sum")
        out = self.model(**batch, loss_reduction="sum")
        return out, out.loss * self.accelerator.num_processes / total.clamp(min=1)

    def _mean_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        """() ``value``'s mean over the processes, on the device (not read: no host sync)."""
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value.clone(), "mean")

    def _finite_everywhere(self, finite: torch.Tensor) -> bool:
        """``finite`` (a () bool tensor: this process's step had finite losses) holds on every process:
        all of them skip the step together, or none does (one process skipping the update would
        leave the others waiting in DDP's next all-reduce). The one host read of a step."""
        finite = finite.float()
        if self.accelerator.num_processes > 1:
            finite = self.accelerator.reduce(finite, "sum") == self.accelerator.num_processes
        return bool(finite)

    def save(self) -> None:
        """Atomic training checkpoint (for resume) plus the model in ``save_pretrained`` form."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_training_state(self.out_dir, self.unwrapped, self.optimiser, self.scheduler, self.progress,
                                settings=asdict(self.config) | {"extra": self.record})
            self.unwrapped.save_pretrained(self.out_dir / "model", processor=self.collator.processor)

    def _summary(self) -> dict[str, Any]:
        history = self.progress["history"]
        val = [h["val_loss"] for h in history if not math.isnan(h.get("val_loss", math.nan))]
        summary = {
            "steps": self.progress["step"], "epochs": self.progress["epoch"],
            "first_train_loss": history[0]["train_loss"] if history else None,
            "last_train_loss": history[-1]["train_loss"] if history else None,
            "val_losses": val, "nonfinite_batches": self.progress["nonfinite"],
            # "extra": what the caller recorded of how the run was set up (the pipeline's training key)
            "config": asdict(self.config) | {"extra": self.record}, "checkpoint": str(self.out_dir / CHECKPOINT_FILE),
        }
        if self.accelerator.is_main_process:
            write_json_atomic(self.out_dir / "summary.json", summary, indent=2, default=str)
        return summary
