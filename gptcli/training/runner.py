"""The template `train` and `finetune` share: settings, setup, run records, the engine, export.

A run is three steps. `setup` does what comes before any data or model loads
(runtime, --precision, the output folder check, the resume point, the seed, the
progress printer, rank and world size); the command then builds its tokenizer,
model and examples (pretrain.py, finetune.py) and cuts them into blocks with
`blocks`; `execute` writes the manifest and effective config, runs the engine
and publishes the final model folder.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.errors import InputError, UsageError
from gptcli.training import checkpoint, configfile, engine, manifest, outdir, packing
from gptcli.training.settings import DEFAULT_VAL_SPLIT, INVOCATION_KEYS, TrainSettings, merge, validate


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, before any process group exists."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return world()[0] == 0


@dataclass
class Setup:
    """What every run resolves once, before any data or model loads; the engine's job carries it on."""

    command: str  # "train" or "finetune"
    settings: TrainSettings
    runtime: Any  # gptcli.runtime.Runtime: the one device resolution of the run
    rank: int
    world_size: int
    out: Path
    resume_from: Path | None
    resume_state: dict[str, Any] | None
    progress: bool  # print progress lines (stderr)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        """A progress line, from rank 0 only."""
        if self.progress and self.is_main:
            console.info(message)


def setup(command: str, s: TrainSettings, progress: bool = True) -> Setup:
    """Runtime, --precision, the output folder check and the resume point: every check that needs
    no data, so a wrong flag fails before any work; then seed the random generators."""
    from gptcli.loading import quiet_transformers
    from gptcli.runtime import resolve_runtime, seed_everything
    from gptcli.training.precision import mixed_precision

    quiet_transformers()
    runtime = resolve_runtime(s.device, "float32", s.threads, purpose="training")
    mixed_precision(s.precision, runtime.device.type)  # an impossible --precision fails before any work
    rank, world_size = world()
    out = Path(s.out or "").expanduser()  # settings.validate() made sure --out is given
    outdir.check(out, resume=s.resume is not None, overwrite=s.overwrite, main=rank == 0)
    resume_from, resume_state = resume_point(s)
    seed_everything(s.seed)
    return Setup(command, s, runtime, rank, world_size, out, resume_from, resume_state, progress)


def settings_from(cli: dict[str, Any], config_path: str | None, command: str) -> TrainSettings:
    """Command line > --config file > the run's saved config (when resuming) > defaults."""
    layers: dict[str, Any] = {}
    out, resume = cli.get("out"), cli.get("resume")
    if resume and out:
        saved = Path(out).expanduser() / outdir.EFFECTIVE_CONFIG
        if saved.is_file():
            layers.update(configfile.load(saved, command))
    if config_path:
        layers.update(configfile.load(config_path, command))
    s = merge(cli, layers, source=str(config_path or outdir.EFFECTIVE_CONFIG))
    return validate(s, command=command)


def resume_command(command: str, s: TrainSettings) -> str:
    return f"gptcli {command} --out {shlex.quote(str(s.out))} --resume auto"


def load_texts(paths: list[str], text_field: str, what: str = "training data") -> list[str]:
    from gptcli.data import load_documents

    docs = load_documents(paths, text_field=text_field)
    texts = [d.text for d in docs if d.text.strip()]
    if not texts:
        raise InputError(f"the {what} ({', '.join(map(str, paths))}) holds no text.")
    return texts


@dataclass
class DataFiles:
    """The training (and validation) files of a run and where their token cache lives.

    stdin ('-') can be read only once and has no path to key a cache on: it is spooled to a
    temporary file first, whose cache lives (and dies) in a temporary folder."""

    paths: list[Path]
    val_paths: list[Path]
    root: Path | None  # the cache root: --cache, else the default (tokcache.default_root)
    text_field: str
    shown: str  # the data as the user named it, for messages
    val_shown: str

    @classmethod
    def open(cls, s: TrainSettings) -> DataFiles:
        from gptcli.data import expand_paths

        paths, val_paths = expand_paths(s.data), expand_paths(s.val_data) if s.val_data else []
        root = Path(s.cache).expanduser() if s.cache else None
        if any(str(p) == "-" for p in paths + val_paths):
            import atexit
            import shutil
            import tempfile

            from gptcli.inputs import read_stdin

            root = Path(tempfile.mkdtemp(prefix="gptcli-stdin-"))
            atexit.register(shutil.rmtree, root, True)
            spooled = root / "stdin.txt"
            spooled.write_text(read_stdin(), encoding="utf-8")
            paths = [spooled if str(p) == "-" else p for p in paths]
            val_paths = [spooled if str(p) == "-" else p for p in val_paths]
        return cls(paths, val_paths, root, s.text_field, ", ".join(map(str, s.data)), ", ".join(map(str, s.val_data)))

    def tokens(self, tok: Any, ctx: Setup) -> Any:
        return self._entry(self.paths, tok, ctx, "training data", self.shown)

    def val_tokens(self, tok: Any, ctx: Setup) -> Any:
        return self._entry(self.val_paths, tok, ctx, "validation data", self.val_shown)

    def _entry(self, paths: list[Path], tok: Any, ctx: Setup, what: str, shown: str) -> Any:
        """The token cache entry, built on first use. Every rank calls this: the first to take the
        cache's lock builds it, the others wait on the lock and then read the finished cache."""
        from gptcli import tokcache

        show = (
            tokcache.stderr_progress(f"tokenizing the {what}")
            if ctx.progress and ctx.is_main and console_is_tty()
            else None
        )
        try:
            return tokcache.ensure(paths, tok, self.text_field, root=self.root, what=what, note=ctx.say, progress=show)
        except InputError as exc:
            if "holds no text" in str(exc):  # name the data as the user gave it (not a spooled stdin file)
                raise InputError(f"the {what} ({shown}) holds no text.") from None
            raise
        finally:
            if show is not None:
                import sys

                sys.stderr.write("\r\033[K")


def console_is_tty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def steps_for(s: TrainSettings, n_blocks: int, world_size: int) -> int:
    if s.steps is not None:
        return s.steps
    if s.epochs is not None:
        return max(1, math.ceil(s.epochs * n_blocks / (s.batch_size * s.grad_accum * world_size)))
    return 1000


def val_fraction(s: TrainSettings, n_tokens: int, block_size: int, say: Callable[[str], None]) -> float:
    """The fraction to hold out: --val-split as given (split() reports one that cannot hold a block),
    else the default when it holds a block. A dataset too small for that (a few finetuning examples)
    trains on everything, without validation, and says so."""
    if s.val_split is not None:
        return s.val_split
    if packing.val_holds_a_block(n_tokens, DEFAULT_VAL_SPLIT, block_size):
        return DEFAULT_VAL_SPLIT
    held = n_tokens - int(n_tokens * (1 - DEFAULT_VAL_SPLIT))
    say(
        f"no validation: the default --val-split ({DEFAULT_VAL_SPLIT:g}, {held:,} of {n_tokens:,} tokens) cannot hold one "
        f"block of {block_size + 1} tokens, so all the data trains. Pass --val-data (or a larger --val-split) to validate."
    )
    return 0.0


def check_block_size(block_size: int, context: int, what: str) -> None:
    if block_size > context:
        raise UsageError(
            f"--block-size {block_size} is larger than the model's context ({context} tokens) of {what}.",
            hint=f"Use --block-size {context} or less.",
        )


def blocks(
    ids: Any, mask: Any | None, block_size: int, val_fraction: float, val_stream: tuple[Any, Any | None] | None
) -> tuple[packing.Blocks, packing.Blocks | None]:
    """Training and validation blocks: the validation data's own stream (val_stream: ids, mask)
    when given, else the last val_fraction of the training stream."""
    if val_stream is None:
        return packing.split(ids, mask, val_fraction, block_size)
    val_ids, val_mask = val_stream
    train = packing.split(ids, mask, 0.0, block_size)[0]
    val = packing.Blocks(val_ids, val_mask, block_size)
    if len(val) < 1:
        raise InputError(
            f"the validation data ({len(val_ids):,} tokens) is smaller than one block of {block_size + 1} tokens."
        )
    return train, val


def execute(
    ctx: Setup,
    *,
    model: Any,
    train: Any,
    val: Any,
    lr: float,
    provenance: Provenance,
    write_model: Callable[[Any, Path, Any], None],
    export: Callable[[Any, Path, Any], None],
    describe: dict[str, Any],
) -> dict[str, Any]:
    command, s, out, world_size = ctx.command, ctx.settings, ctx.out, ctx.world_size
    resume_from = ctx.resume_from
    steps = steps_for(s, len(train), world_size)
    if ctx.is_main:
        outdir.prepare(out, resume=resume_from is not None, overwrite=s.overwrite)
        kept = outdir.published(out)  # resuming in place: the earlier run's final model is still there
        saved = _portable({k: v for k, v in s.to_dict().items() if k not in INVOCATION_KEYS})
        configfile.dump(saved, out / outdir.EFFECTIVE_CONFIG)
        manifest.write(
            out,
            command=command,
            settings=saved,
            device=str(ctx.runtime.device),
            world_size=world_size,
            extra={"steps": steps, **describe},
            prints=provenance.prints,
            start_step=provenance.start_step,
            earlier=provenance.earlier,
            outputs=kept,
        )
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if ctx.progress:
            console.info(
                f"{command}: {params / 1e6:.2f} M parameters"
                + (f" ({trainable / 1e6:.3f} M trainable)" if trainable != params else "")
                + f" | {len(train):,} training blocks of {train.block_size} tokens"
                + (f" | {len(val):,} validation blocks" if val is not None else "")
                + f" | {steps:,} steps of {s.batch_size * s.grad_accum * world_size} sequences"
            )
    job = engine.Job(
        model=model,
        train=train,
        val=val,
        settings=s,
        runtime=ctx.runtime,
        rank=ctx.rank,
        world_size=world_size,
        out=out,
        steps=steps,
        lr=lr,
        write_model=write_model,
        resume_from=resume_from,
        resume_state=ctx.resume_state,
        resume_command=resume_command(command, s),
        extra_summary={"command": command},
    )
    summary = engine.run(job, reporter_enabled=ctx.progress)
    if job.is_main:
        from gptcli.training.export import publish

        manifest.add_outputs(out, publish(out, lambda folder: export(job.final_model, folder, job.final_state)))
    return summary


def resume_point(s: TrainSettings) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its state, read (and checked) before any data or model loads."""
    if s.resume is None:
        return None, None
    path = checkpoint.find_resume(Path(s.out or "").expanduser(), s.resume)
    return path, checkpoint.load_state(path)


@dataclass
class Provenance:
    """What run.json records about the data: this invocation's fingerprints and the earlier segments."""

    prints: dict[str, list[dict[str, Any]]]
    start_step: int = 0
    earlier: list[dict[str, Any]] = field(default_factory=list)


def provenance(ctx: Setup, entries: list[Any] | None = None) -> Provenance:
    """Fingerprint the data and, when resuming, compare it with what the earlier steps were trained
    on. Changed data is allowed (more data, fixed typos) but never silent: a warning says so, and
    run.json keeps the earlier fingerprints as their own segments. `entries`: the token cache
    entries the run reads, whose recorded content hashes spare reading their files again."""
    if not ctx.is_main:  # only rank 0 writes run.json
        return Provenance({"data": [], "val_data": []})
    s, resume_from, resume_state = ctx.settings, ctx.resume_from, ctx.resume_state
    known = {path: digest for e in entries or [] for path, digest in e.content_hashes().items()}
    prints = manifest.fingerprints(s.data, s.val_data, known)
    if resume_from is None or resume_state is None:
        return Provenance(prints)
    step = int(resume_state["step"])
    earlier = manifest.segments_before(manifest.read(resume_from.parent.parent / manifest.NAME), step)
    changes = manifest.data_changes(earlier[-1], prints) if earlier else []
    if changes:
        console.warn(
            f"the data differ from what steps {int(earlier[-1].get('start_step') or 0)}-{step} were trained on "
            f"({', '.join(changes[:5])}{' ...' if len(changes) > 5 else ''}); training continues on the data "
            "as it is now, so this is not an exact continuation. run.json keeps the fingerprints of both "
            '("segments").'
        )
    return Provenance(prints, step, earlier)


def _portable(values: dict[str, Any]) -> dict[str, Any]:
    """Local paths made absolute, so `--resume auto` works from any working directory."""

    def fix(p: Any) -> Any:
        if not isinstance(p, str) or p == "-":
            return p
        path = Path(p).expanduser()
        return str(path.resolve()) if path.exists() else p

    out = dict(values)
    for key in ("data", "val_data"):
        out[key] = [fix(p) for p in out.get(key) or []]
    from gptcli import bundled

    for key in ("model_config", "tokenizer", "model", "out", "cache"):
        if not (isinstance(out.get(key), str) and bundled.path_of(out[key])):  # bundled names stay names
            out[key] = fix(out.get(key))
    return out
