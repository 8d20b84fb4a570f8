"""The ``stability`` command line: ``demo``, ``table``, ``check`` and ``experiment``.

Errors in the user's input (a bad value, a missing file, a model that does not
import) end the command with exit status 2 and a one-line message on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
import warnings

__all__ = ["main"]


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


EXIT_CODES = """exit status:
  0  done (check: the verdict is decided, yes or no)
  1  an error in the model or a library failure (STABILITY_DEBUG=1 shows the traceback)
  2  bad input: an option, a file, a module or data that does not fit (one line on stderr)
  3  check only: the verdict is undecided (too close to the limit or not converged)
  130  interrupted (Ctrl-C)"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``stability check: error: ...``), exit status 2,
    instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stability",
        description="Can asynchronous training with delay tau, learning rate lr and momentum "
        "beta reach and stay in a minimum?",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name, help):
        return sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES,
                              formatter_class=_HelpFormatter)  # fmt: skip

    demo = add("demo", "train a small network on digits and judge its minimum")
    demo.add_argument("--out", default="stability-demo", help="output folder for the PNG")
    demo.add_argument(
        "--quick", action="store_true", help="fewer delays and shorter simulations (for tests)"
    )

    table = add(
        "table",
        "max stable lr*sharpness for delays and momenta; with --diloco, the largest "
        "stable outer lr of a local SGD / DiLoCo outer loop at one sharpness",
    )
    # The delayed-SGD options default to None so that giving one with --diloco is an
    # error (_TABLE_DEFAULTS fills them in); their defaults are written in the help.
    table.add_argument("--tau", type=int, nargs="+",
                       help="delays (integers >= 0) (default: 0 1 2 4 8 16 32 64)")  # fmt: skip
    table.add_argument("--beta", type=float, nargs="+",
                       help="momentum coefficients in [0, 1) (default: 0.0 0.9)")  # fmt: skip
    table.add_argument(
        "--momentum",
        nargs="+",
        help="momentum rules, any of heavy_ball, nesterov, shifted "
        "(default: heavy_ball nesterov shifted)",
    )
    table.add_argument("--json", action="store_true", help="machine-readable output")
    _add_local_sgd_options(table)

    experiment = add(
        "experiment",
        "on the bundled digits: the delayed edge of stability (eos), the paper's claims "
        "(paper), delayed Adam at the adaptive edge of stability (adam-eos), DiLoCo's "
        "stability map over (outer lr, outer momentum) with its measured boundary (diloco), "
        "a pipeline's largest stable lr per block against simulation (pipeline)",
    )
    experiment.add_argument(
        "name", choices=["eos", "paper", "adam-eos", "diloco", "pipeline"], help="which experiment"
    )
    experiment.add_argument(
        "--full", action="store_true", help="the larger sizes (default: the quick ones)"
    )
    experiment.add_argument(
        "--size", choices=["tiny", "quick", "full"], help="explicit size (tiny: the tests')"
    )
    experiment.add_argument(
        "--out", default="stability-experiments", help="folder for the JSON, table and PNGs"
    )
    experiment.add_argument("--quiet", action="store_true", help="no progress bars")

    check = add("check", "judge your own model and checkpoint")
    check.add_argument("--model", required=True, help="PKG.MODULE:FACTORY returning the model")
    check.add_argument(
        "--params",
        help="checkpoint: .npz file or Orbax directory (without it: the factory's initial "
        "weights, said on stderr)",
    )
    check.add_argument("--data", required=True, help="PKG.MODULE:BATCHES (callable or iterable)")
    check.add_argument("--loss", help="PKG.MODULE:FN, loss(outputs, labels) for modules")
    check.add_argument(
        "--batch-keys",
        nargs=2,
        metavar=("INPUT_KEY", "LABEL_KEY"),
        help="keys of dict batches (default: found by name, e.g. image/label, x/y)",
    )
    check.add_argument(
        "--call-kwargs",
        metavar="JSON",
        help="extra keywords for the module's __call__, e.g. '{\"deterministic\": true}'",
    )
    check.add_argument(
        "--train",
        action="store_true",
        help="training mode: batch statistics of the batch, dropout with a fixed key",
    )
    check.add_argument(
        "--tau", type=int, help="the delay (integer >= 0; required, except with --diloco)"
    )
    check.add_argument(
        "--lr",
        type=float,
        help="the learning rate (> 0; required, except with --optimizer-state: the "
        "optimizer's lr, default the one an optax.inject_hyperparams state holds)",
    )
    check.add_argument(
        "--beta", type=float, help="momentum coefficient in [0, 1) (default: 0)"
    )  # fmt: skip
    check.add_argument(
        "--momentum", help="momentum rule: heavy_ball, nesterov or shifted (default: heavy_ball)",
    )  # fmt: skip
    _add_optimizer_options(check)
    check.add_argument("--max-hvps", type=int, default=200,
                       help="most Hessian-vector products before answering undecided")  # fmt: skip
    check.add_argument(
        "--require-minimum",
        action="store_true",
        help="a proven negative curvature (not a minimum) makes the verdict 'no'",
    )
    check.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="mini-batches of B examples: adds the mean-square condition (Wu, Ma and E; "
        "docs/theory.md section 15) and reports which condition binds",
    )
    check.add_argument(
        "--num-examples",
        type=int,
        metavar="N",
        help="examples the batches are drawn from (default: the examples in --data)",
    )
    check.add_argument(
        "--replacement",
        action="store_true",
        help="batches drawn with replacement (default: without, B distinct examples)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_check_local_sgd_options(check)
    _add_check_pipeline_options(check)
    return parser


def _add_check_pipeline_options(check) -> None:
    """``stability check --stages P`` / ``--block-delays JSON``: a delay per block of
    parameters (``is_accessible(..., block_delays=)``, docs/theory.md section 18)."""
    group = check.add_argument_group(
        "pipelines: a delay per block of parameters (instead of --tau; docs/theory.md section 18)"
    )
    group.add_argument(
        "--stages", type=int, metavar="P",
        help="cut the model's top-level modules (in natural order) into P pipeline stages "
        "of near-equal size; stage s gets the --pipeline-schedule's delay",
    )  # fmt: skip
    group.add_argument(
        "--pipeline-schedule", metavar="NAME",
        help="with --stages: 1f1b (asynchronous 1F1B / PipeDream: P - 1 - s; default), "
        "pipedream_2bw (1 for every stage) or gpipe (0)",
    )  # fmt: skip
    group.add_argument(
        "--block-delays", metavar="JSON",
        help="the delay of each block by parameter path prefix, e.g. "
        "'{\"Dense_0\": 3, \"Dense_1\": 2, \"Dense_2\": 1, \"Dense_3\": 0}'",
    )  # fmt: skip


def _add_check_local_sgd_options(check) -> None:
    """``stability check --diloco``: judge the minimum under local SGD / DiLoCo rounds
    (``is_accessible(..., local_sgd=)``, docs/theory.md section 17). The flags are
    those of ``table --diloco`` with one value each; they default to None so that one
    given without --diloco is an error (_CHECK_LOCAL_SGD_DEFAULTS fills them in)."""
    group = check.add_argument_group(
        "local SGD / DiLoCo rounds (with --diloco; docs/theory.md section 17)"
    )
    group.add_argument(
        "--diloco", action="store_true",
        help="judge rounds of H inner steps and an outer rule instead of delayed SGD "
        "(leave --tau, --lr, --beta and --momentum out): every Hessian eigenvalue must "
        "have outer lr x kappa in the outer rule's stable interval",
    )  # fmt: skip
    group.add_argument("--inner-lr", type=float, metavar="LR",
                       help="the inner learning rate (> 0; required with --diloco)")  # fmt: skip
    group.add_argument("--inner-steps", type=int, metavar="H",
                       help="inner steps per round (integer >= 1; required with "
                       "--diloco)")  # fmt: skip
    group.add_argument("--inner-rule", choices=LOCAL_SGD_RULES,
                       help="the inner optimizer (choices: gd, heavy_ball, nesterov; "
                       "default: gd, or heavy_ball when --inner-momentum > 0)")  # fmt: skip
    group.add_argument("--inner-momentum", type=float, metavar="BETA",
                       help="the inner rule's momentum in [0, 1) (default: 0)")  # fmt: skip
    group.add_argument("--keep-inner-state", action="store_true",
                       help="each worker keeps its inner momentum buffer across rounds "
                       "(judged undecided: the certificate needs it zeroed every "
                       "round)")  # fmt: skip
    group.add_argument("--outer-rule", choices=LOCAL_SGD_RULES,
                       help="the outer optimizer (choices: gd, heavy_ball, nesterov; "
                       "default: nesterov, DiLoCo's)")  # fmt: skip
    group.add_argument("--outer-momentum", type=float, metavar="MU",
                       help="the outer momentum in [0, 1) (default: 0.9; 0 with "
                       "--outer-rule gd)")  # fmt: skip
    group.add_argument("--outer-lr", type=float, metavar="LR",
                       help="the outer learning rate (> 0; required with --diloco; "
                       "DiLoCo's is 0.7)")  # fmt: skip
    group.add_argument("--schedule", choices=LOCAL_SGD_SCHEDULES,
                       help="the outer delay: diloco (none), eager, streaming (--overlap "
                       "rounds) (default: diloco)")  # fmt: skip
    group.add_argument("--workers", type=int, metavar="M",
                       help="workers M (only with --schedule eager) (default: 1)")  # fmt: skip
    group.add_argument("--overlap", type=int, metavar="TAU",
                       help="rounds by which the averaged pseudo-gradient arrives late "
                       "(only with --schedule streaming, where it is required) "
                       "(default: 0)")  # fmt: skip


def _add_local_sgd_options(table) -> None:
    """``stability table --diloco``: the outer loop of local SGD / DiLoCo along one
    Hessian eigenvalue (stability.theory.local_sgd, docs/theory.md section 17). The
    options default to None so that one given without --diloco is an error;
    _LOCAL_SGD_DEFAULTS fills them in and their help says the default."""
    group = table.add_argument_group(
        "local SGD / DiLoCo outer loop (with --diloco; docs/theory.md section 17)"
    )
    group.add_argument(
        "--diloco", action="store_true",
        help="tabulate the outer loop of local SGD / DiLoCo instead: per inner-steps H and "
        "outer momentum, the pseudo-gradient factor kappa, the largest stable outer lr and "
        "(with --outer-lr) the spectral radius of one round",
    )  # fmt: skip
    group.add_argument("--sharpness", type=float, metavar="A",
                       help="the Hessian eigenvalue a (required with --diloco)")  # fmt: skip
    group.add_argument("--inner-lr", type=float, metavar="LR",
                       help="the inner learning rate (> 0; required with --diloco)")  # fmt: skip
    group.add_argument("--inner-steps", type=int, nargs="+", metavar="H",
                       help="inner steps per round, one row each (integers >= 1) "
                       "(default: 1 10 100 500)")  # fmt: skip
    group.add_argument("--inner-rule", choices=LOCAL_SGD_RULES,
                       help="the inner optimizer (choices: gd, heavy_ball, nesterov; "
                       "default: gd, or heavy_ball when --inner-momentum > 0)")  # fmt: skip
    group.add_argument("--inner-momentum", type=float, metavar="BETA",
                       help="the inner rule's momentum in [0, 1) (default: 0)")  # fmt: skip
    group.add_argument("--keep-inner-state", action="store_true",
                       help="each worker keeps its inner momentum buffer across rounds (as "
                       "DiLoCo keeps its AdamW state; default: zeroed every round)")  # fmt: skip
    group.add_argument("--outer-rule", choices=LOCAL_SGD_RULES,
                       help="the outer optimizer, gd being plain outer SGD (choices: gd, "
                       "heavy_ball, nesterov; default: nesterov, DiLoCo's)")  # fmt: skip
    group.add_argument("--outer-momentum", type=float, nargs="+", metavar="MU",
                       help="outer momenta in [0, 1), one row each (default: 0.9; "
                       "0 with --outer-rule gd)")  # fmt: skip
    group.add_argument("--outer-lr", type=float, metavar="LR",
                       help="also print the spectral radius of one round (H inner steps) "
                       "at this outer lr (> 0; default: not printed)")  # fmt: skip
    group.add_argument("--schedule", choices=LOCAL_SGD_SCHEDULES,
                       help="the outer delay: diloco (none), eager (Kale et al. 2025: own "
                       "fresh, others one round stale), streaming (--overlap rounds) "
                       "(choices: diloco, eager, streaming; default: diloco)")  # fmt: skip
    group.add_argument("--workers", type=int, metavar="M",
                       help="workers M (integer >= 1; only with --schedule eager) "
                       "(default: 1)")  # fmt: skip
    group.add_argument("--overlap", type=int, metavar="TAU",
                       help="rounds by which the averaged pseudo-gradient arrives late "
                       "(integer >= 1; only with --schedule streaming, where it is "
                       "required) (default: 0)")  # fmt: skip


# Without importing JAX (the parser must not): checked against the library in
# tests/test_cli_diloco.py.
LOCAL_SGD_RULES = ("gd", "heavy_ball", "nesterov")
LOCAL_SGD_SCHEDULES = ("diloco", "eager", "streaming")
# The largest --overlap where a row needs a dense polynomial (see _check_local_sgd_options).
MAX_DENSE_OVERLAP = 1000


def _add_optimizer_options(check) -> None:
    """``check``'s options for Adam, AdamW and RMSprop verdicts (docs/how-to.md, "Is my
    Adam-trained minimum stable under delay?")."""
    check.add_argument(
        "--optimizer-state",
        nargs="?",
        const=True,
        metavar="PATH",
        help="judge Adam/AdamW/RMSprop with the second moment of this optimizer state: "
        "alone, the 'opt_state' entry of the --params checkpoint (a training state "
        "{'params', 'opt_state', ...}); with PATH, that checkpoint (.npz or Orbax: the "
        "optax state, or a dict with an 'opt_state' entry). Replaces --beta/--momentum "
        "(default: off, an SGD-type rule)",
    )
    check.add_argument(
        "--optimizer",
        choices=["adam", "adamw", "rmsprop"],
        help="the optimizer that wrote --optimizer-state (default: from the state: adam, "
        "adamw with --weight-decay or a stored weight decay, rmsprop for an RMS state)",
    )
    words = "with --optimizer-state; default: the value an inject_hyperparams state holds, else"
    check.add_argument("--b1", type=float,
                       help=f"Adam's first-moment decay, RMSprop's momentum ({words} optax's "
                       "0.9; RMSprop 0)")  # fmt: skip
    check.add_argument("--b2", type=float,
                       help=f"Adam's second-moment decay, RMSprop's decay ({words} optax's "
                       "0.999; RMSprop 0.9)")  # fmt: skip
    check.add_argument("--eps", type=float, help=f"Adam's / RMSprop's eps ({words} 1e-8)")
    check.add_argument("--eps-root", type=float, help=f"Adam's eps_root ({words} 0)")
    check.add_argument("--weight-decay", type=float,
                       help=f"AdamW's decoupled weight decay ({words} optax.adamw's 1e-4; "
                       "adam 0)")  # fmt: skip


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help (unless none or already said), the exit codes'
    layout kept."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if isinstance(default, list):
            default = " ".join(str(x) for x in default)
        return f"{text} (default: {default})"


def _resolve(spec: str, what: str):
    """Import ``PKG.MODULE:NAME`` and return the object. The user's own modules are
    found as ``python -m`` would find them: the current directory first on the import
    path, while importing only (a folder named like a library, e.g. ``orbax/``, must
    not shadow it for the rest of the run)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} must look like PKG.MODULE:NAME; got {spec!r}")
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"{what}: cannot import module {module_name!r} ({err})") from err
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


# table's delayed-SGD options and their defaults (None in the parser: see _build_parser).
_TABLE_DEFAULTS = (
    ("--tau", "tau", [0, 1, 2, 4, 8, 16, 32, 64]),
    ("--beta", "beta", [0.0, 0.9]),
    ("--momentum", "momentum", ["heavy_ball", "nesterov", "shifted"]),
)
# table --diloco's options and their defaults (None: required or depends on another).
_LOCAL_SGD_DEFAULTS = (
    ("--sharpness", "sharpness", None),
    ("--inner-lr", "inner_lr", None),
    ("--inner-steps", "inner_steps", [1, 10, 100, 500]),
    ("--inner-rule", "inner_rule", None),
    ("--inner-momentum", "inner_momentum", 0.0),
    ("--keep-inner-state", "keep_inner_state", None),
    ("--outer-rule", "outer_rule", "nesterov"),
    ("--outer-momentum", "outer_momentum", None),
    ("--outer-lr", "outer_lr", None),
    ("--schedule", "schedule", "diloco"),
    ("--workers", "workers", 1),
    ("--overlap", "overlap", 0),
)


# check --diloco's options and their defaults (None: required or depends on another).
_CHECK_LOCAL_SGD_DEFAULTS = (
    ("--inner-lr", "inner_lr", None),
    ("--inner-steps", "inner_steps", None),
    ("--inner-rule", "inner_rule", None),
    ("--inner-momentum", "inner_momentum", 0.0),
    ("--keep-inner-state", "keep_inner_state", None),
    ("--outer-rule", "outer_rule", "nesterov"),
    ("--outer-momentum", "outer_momentum", None),
    ("--outer-lr", "outer_lr", None),
    ("--schedule", "schedule", "diloco"),
    ("--workers", "workers", 1),
    ("--overlap", "overlap", 0),
)


def _given(args, options) -> list[str]:
    """The flags among ``options`` that the user typed (their value not None/False)."""
    return [flag for flag, dest, _ in options if getattr(args, dest) not in (None, False)]


def _cmd_table(args) -> int:
    if args.diloco:
        return _cmd_table_local_sgd(args)
    stray = _given(args, _LOCAL_SGD_DEFAULTS)
    if stray:
        raise UsageError(f"{stray[0]} belongs to the local SGD / DiLoCo table: add --diloco")
    for _, dest, default in _TABLE_DEFAULTS:
        if getattr(args, dest) is None:
            setattr(args, dest, default)

    import numpy as np

    from stability.theory.boundary_locus import max_stable_sharpness
    from stability.theory.rules import host_float64
    from stability.validation import check_beta, check_momentum, check_tau

    for rule in args.momentum:
        check_momentum(rule, "--momentum")
    for tau in args.tau:  # Python ints: any size is checked, none wraps
        check_tau(tau, "--tau")
    for beta in args.beta:
        check_beta(beta, "--beta")
    # The table's numbers are typed by the user: float64 on the host whatever
    # jax_enable_x64 says (float32 prints 3.79999995 for 3.8).
    taus = np.asarray(args.tau, dtype=np.float64)
    rows = []
    for beta in args.beta:
        with host_float64():
            per_rule = {
                rule: np.asarray(max_stable_sharpness(1.0, taus, beta, momentum=rule), float)
                for rule in args.momentum
            }
        for i, tau in enumerate(args.tau):
            rows.append(
                {"tau": int(tau), "beta": float(beta)}
                | {rule: float(q[i]) for rule, q in per_rule.items()}
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("max stable lr * sharpness (q_max); with momentum, divide by (1 - beta) for the")
    print("threshold at equal effective learning rate lr / (1 - beta)")
    # beta as typed (0.999999 is not "1"), columns as wide as their longest entry
    wt = max(5, *(len(str(row["tau"])) for row in rows))
    wb = max(6, *(len(repr(row["beta"])) for row in rows))
    header = f"{'tau':>{wt}} {'beta':>{wb}} " + " ".join(f"{r:>12}" for r in args.momentum)
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['tau']:>{wt}d} {row['beta']!r:>{wb}} "
            + " ".join(_table_number(row[rule]) for rule in args.momentum)
        )
    return 0


def _table_number(q: float) -> str:
    """8 decimals; below 1e-3 (long delays) 7 significant digits, never 0.00000000."""
    return f"{q:>12.6e}" if 0 < abs(q) < 1e-3 else f"{q:>12.8f}"


def _checked_inner_rule(args) -> str:
    """--inner-rule and --inner-momentum of --diloco checked; returns the rule name (a
    momentum typed without a rule means heavy ball: torch/optax SGD momentum)."""
    from stability.theory.rules import as_rule

    inner_rule = args.inner_rule or ("heavy_ball" if args.inner_momentum != 0 else "gd")
    if inner_rule == "gd" and args.inner_momentum != 0:
        raise UsageError(
            f"--inner-momentum must be 0 with --inner-rule gd (choose heavy_ball or "
            f"nesterov); got {args.inner_momentum!r}"
        )
    as_rule(inner_rule).check_beta(args.inner_momentum, "--inner-momentum")
    return inner_rule


def _check_outer_momentum(outer_rule: str, mu) -> None:
    """One --outer-momentum value against --outer-rule."""
    from stability.theory.rules import as_rule

    if outer_rule == "gd" and mu != 0:
        raise UsageError(
            f"--outer-momentum must be 0 with --outer-rule gd (choose heavy_ball or "
            f"nesterov); got {mu!r}"
        )
    as_rule(outer_rule).check_beta(mu, "--outer-momentum")


def _checked_workers_and_overlap(args, *, dense_rows: bool = False) -> tuple[int, int]:
    """--workers and --overlap against --schedule; ``dense_rows``: the rows factor a
    polynomial of degree ~overlap (``table`` with kept state or --outer-lr)."""
    from stability.theory.local_sgd import MAX_WORKERS
    from stability.validation import MAX_DELAY, check_int

    workers = check_int("--workers", args.workers, 1, MAX_WORKERS)
    if args.schedule != "eager" and workers != 1:
        raise UsageError(
            f"--workers matters only with --schedule eager (identical full-batch workers "
            f"send equal pseudo-gradients); got {workers} with --schedule {args.schedule}"
        )
    overlap = check_int("--overlap", args.overlap, 0, MAX_DELAY)
    if args.schedule == "streaming" and overlap < 1:
        raise UsageError(f"--overlap must be >= 1 with --schedule streaming; got {overlap}")
    if overlap > MAX_DENSE_OVERLAP and dense_rows:
        # Kept state and the radius factor a polynomial of degree ~overlap per row
        # (overlap 2000: 10-30 s and 4 GB); the reset threshold has a closed path.
        raise UsageError(
            f"--overlap must be <= {MAX_DENSE_OVERLAP:,} with --keep-inner-state or "
            f"--outer-lr (each row factors a polynomial of degree overlap + 3); got {overlap}"
        )
    if args.schedule != "streaming" and overlap != 0:
        raise UsageError(
            f"--overlap is only for --schedule streaming; got {overlap} with "
            f"--schedule {args.schedule}"
        )
    return workers, overlap


def _check_local_sgd_options(args):
    """The --diloco options checked, each error naming its flag; returns the
    `LocalSGD` configuration without H (one per row) and the outer momenta."""
    from stability.theory.local_sgd import MAX_INNER_STEPS, LocalSGD
    from stability.validation import check_finite, check_int, check_lr

    mixed = _given(args, _TABLE_DEFAULTS)
    if mixed:
        hint = {
            "--tau": "the outer delay is --schedule and --overlap",
            "--beta": "the outer momentum is --outer-momentum",
            "--momentum": "the outer rule is --outer-rule",
        }[mixed[0]]
        raise UsageError(f"{mixed[0]} belongs to the delayed-SGD table, not to --diloco ({hint})")
    for flag, dest in (("--sharpness", "sharpness"), ("--inner-lr", "inner_lr")):
        if getattr(args, dest) is None:
            raise UsageError(f"{flag} is required with --diloco")
    for _, dest, default in _LOCAL_SGD_DEFAULTS:
        if getattr(args, dest) is None and default is not None:
            setattr(args, dest, default)
    check_finite("--sharpness", args.sharpness)
    check_lr(args.inner_lr, "--inner-lr")
    for h in args.inner_steps:
        check_int("--inner-steps", h, 1, MAX_INNER_STEPS)
    inner_rule = _checked_inner_rule(args)
    if args.outer_momentum is None:
        args.outer_momentum = [0.0] if args.outer_rule == "gd" else [0.9]
    for mu in args.outer_momentum:
        _check_outer_momentum(args.outer_rule, mu)
    if args.outer_lr is not None:
        check_lr(args.outer_lr, "--outer-lr")
    dense = args.keep_inner_state or args.outer_lr is not None
    workers, overlap = _checked_workers_and_overlap(args, dense_rows=dense)
    config = LocalSGD(
        inner_lr=float(args.inner_lr),
        inner=inner_rule,
        inner_beta=float(args.inner_momentum),
        reset=not args.keep_inner_state,
        outer=args.outer_rule,
        schedule=args.schedule,
        workers=workers,
        overlap=overlap,
    )
    return config, [float(mu) for mu in args.outer_momentum]


def _check_check_local_sgd_options(args):
    """``check --diloco``'s options checked before any model is loaded, each error
    naming its flag; returns the `LocalSGD` configuration, the outer lr and momentum."""
    from stability.theory.local_sgd import MAX_INNER_STEPS, LocalSGD
    from stability.validation import check_int, check_lr

    for flag, dest in (("--tau", "tau"), ("--lr", "lr"), ("--beta", "beta"),
                       ("--momentum", "momentum"), ("--batch-size", "batch_size"),
                       ("--optimizer-state", "optimizer_state")):  # fmt: skip
        if getattr(args, dest) is not None:
            raise UsageError(
                f"{flag} cannot go with --diloco (the inner rule is --inner-rule with "
                "--inner-lr, the outer one --outer-rule with --outer-lr and --outer-momentum, "
                "the outer delay --schedule; the rounds are judged full batch)"
            )
    for flag, dest in (("--inner-lr", "inner_lr"), ("--inner-steps", "inner_steps"),
                       ("--outer-lr", "outer_lr")):  # fmt: skip
        if getattr(args, dest) is None:
            raise UsageError(f"{flag} is required with --diloco")
    for _, dest, default in _CHECK_LOCAL_SGD_DEFAULTS:
        if getattr(args, dest) is None and default is not None:
            setattr(args, dest, default)
    check_lr(args.inner_lr, "--inner-lr")
    steps = check_int("--inner-steps", args.inner_steps, 1, MAX_INNER_STEPS)
    inner_rule = _checked_inner_rule(args)
    if args.outer_momentum is None:
        args.outer_momentum = 0.0 if args.outer_rule == "gd" else 0.9
    _check_outer_momentum(args.outer_rule, args.outer_momentum)
    check_lr(args.outer_lr, "--outer-lr")
    workers, overlap = _checked_workers_and_overlap(args)
    config = LocalSGD(
        inner_lr=float(args.inner_lr),
        inner_steps=steps,
        inner=inner_rule,
        inner_beta=float(args.inner_momentum),
        reset=not args.keep_inner_state,
        outer=args.outer_rule,
        schedule=args.schedule,
        workers=workers,
        overlap=overlap,
    )
    return config, float(args.outer_lr), float(args.outer_momentum)


def _cmd_table_local_sgd(args) -> int:
    """``stability table --diloco``: one row per (H, outer momentum)."""
    config, momenta = _check_local_sgd_options(args)

    import numpy as np

    from stability.theory.local_sgd import (
        max_stable_outer_lr,
        pseudo_gradient_factor,
        round_spectral_radius,
    )
    from stability.theory.rules import host_float64

    a = np.float64(args.sharpness)
    rows = []
    # Typed numbers: float64 on the host whatever jax_enable_x64 says.
    with host_float64():
        for h in args.inner_steps:
            at_h = config._replace(inner_steps=int(h))
            kappa = pseudo_gradient_factor(at_h, a)
            for mu in momenta:
                radius = None
                if args.outer_lr is not None:
                    radius = round_spectral_radius(at_h, a, np.float64(args.outer_lr), mu)
                rows.append(
                    {
                        "inner_steps": int(h),
                        "outer_momentum": mu,
                        "kappa": _json_number(kappa),
                        "max_stable_outer_lr": _json_number(max_stable_outer_lr(at_h, a, mu)),
                        "outer_lr": args.outer_lr,
                        "round_spectral_radius": _json_number(radius),
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=1, allow_nan=False))
        return 0
    state = "kept across rounds" if args.keep_inner_state else "zeroed every round"
    inner_beta = f", momentum {config.inner_beta!r}" if config.inner != "gd" else ""
    schedule = {
        "diloco": "diloco (no outer delay)",
        "eager": f"eager, M = {config.workers} workers",
        "streaming": f"streaming, overlap {config.overlap} round(s)",
    }[config.schedule]
    print(f"local SGD / DiLoCo outer loop at sharpness {args.sharpness!r}")
    print(
        f"inner {config.inner}, lr {config.inner_lr!r}{inner_beta}, state {state}; "
        f"outer {config.outer}; schedule {schedule}"
    )
    print("kappa: the pseudo-gradient per unit of parameter (one round from a zero buffer);")
    print("max outer lr: the largest stable outer lr (0: none is stable, n/a: not certified)")
    wh = max(5, *(len(str(row["inner_steps"])) for row in rows))
    wm = max(6, *(len(repr(row["outer_momentum"])) for row in rows))
    columns = [f"{'H':>{wh}}", f"{'mu':>{wm}}", f"{'kappa':>12}", f"{'max outer lr':>12}"]
    if args.outer_lr is not None:
        columns.append(f"{'radius@' + repr(args.outer_lr):>12}")
    header = " ".join(columns)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [f"{row['inner_steps']:>{wh}d}", f"{row['outer_momentum']!r:>{wm}}"]
        for key in ("kappa", "max_stable_outer_lr", "round_spectral_radius"):
            if key == "round_spectral_radius" and args.outer_lr is None:
                continue
            value = row[key]
            cells.append(f"{'n/a':>12}" if value is None else _row_number(value))
        print(" ".join(cells))
    return 0


def _row_number(x: float) -> str:
    """`_table_number`, and 7 significant digits from 1e3 up (an overshooting inner
    loop makes kappa and the radius huge)."""
    return f"{x:>12.6e}" if abs(x) >= 1e3 else _table_number(x)


def _json_number(x):
    """A float, or None for a missing, NaN or infinite value (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _load_data(spec: str):
    """The ``--data`` object: one batch, a list of batches, or a re-callable factory of
    iterators."""
    obj = _resolve(spec, "--data")
    if _is_module(obj):
        raise UsageError(f"--data {spec} is a Flax module; --data names the batches: a list, "
                         "one batch or a callable returning an iterator of batches")  # fmt: skip
    if callable(obj):
        produced = obj()
        if _is_module(produced):
            raise UsageError(
                f"--data {spec} returned a Flax module ({type(produced).__name__}), not data: "
                "--data names the batches (a list, one batch or a callable returning an "
                "iterator of batches); the model goes in --model"
            )
        if isinstance(produced, (tuple, dict, list)) or hasattr(produced, "shape"):
            return produced  # a single batch (a tuple, a dict or one array), or a list
        return obj  # re-callable for a fresh iterator per pass
    return obj


def _first_batch(data):
    """One batch of ``--data`` (None when none can be read), for checking a checkpoint's
    shapes against the model before it is decompressed; a factory is called once more
    and one batch read."""
    if not callable(data):
        return data
    try:
        return next(iter(data()), None)
    except Exception:  # noqa: BLE001 - the passes will report a broken loader
        return None


def _call_kwargs(text):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--call-kwargs must be a JSON object; got {text!r} ({err})") from err
    if not isinstance(value, dict):
        raise UsageError(f"--call-kwargs must be a JSON object; got {text!r}")
    return value


# The options of an optimizer state (`_add_optimizer_options`) and the names
# `preconditioner_from_optax` gives them in its errors.
_OPTIMIZER_FLAGS = (
    ("--optimizer", "optimizer", "kind"),
    ("--b1", "b1", "b1"),
    ("--b2", "b2", "b2"),
    ("--eps", "eps", "eps"),
    ("--eps-root", "eps_root", "eps_root"),
    ("--weight-decay", "weight_decay", "weight_decay"),
)


def _check_optimizer_options(args) -> None:
    """The optimizer-state options, named as typed: each needs --optimizer-state, which
    replaces --beta, --momentum and --batch-size; the numbers in range."""
    from stability.validation import check_beta, check_finite

    if args.optimizer_state is None:
        given = [flag for flag, dest, _ in _OPTIMIZER_FLAGS if getattr(args, dest) is not None]
        if given:
            raise UsageError(f"{given[0]} needs --optimizer-state (an Adam/RMSprop state)")
        if args.lr is None and not args.diloco:
            raise UsageError("--lr is required (without --optimizer-state)")
        return
    if args.optimizer_state is True and not args.params:
        raise UsageError(
            "--optimizer-state without PATH reads the 'opt_state' entry of the --params "
            "checkpoint: pass --params CHECKPOINT, or --optimizer-state PATH"
        )
    clash = [f for f, v in (("--beta", args.beta), ("--momentum", args.momentum)) if v is not None]
    if clash:
        raise UsageError(
            f"{' and '.join(clash)} cannot go with --optimizer-state: the momentum is the "
            "optimizer's (--b1) and the rule Adam's"
        )
    if args.batch_size is not None:
        raise UsageError(
            "--batch-size cannot go with --optimizer-state: the mean-square condition is "
            "derived for the SGD-type rules only"
        )
    for flag in ("--b1", "--b2"):
        value = getattr(args, flag[2:])
        if value is not None:
            check_beta(value, flag)
    for flag, dest in (("--eps", "eps"), ("--eps-root", "eps_root"),
                       ("--weight-decay", "weight_decay")):  # fmt: skip
        value = getattr(args, dest)
        if value is not None:
            check_finite(flag, value)
            if value < 0:
                raise UsageError(f"{flag} must be >= 0; got {value!r}")


def _optimizer_state(args, from_params):
    """The optimizer state to judge: the --params checkpoint's ``opt_state`` entry
    (``from_params``, None when it has none) or the --optimizer-state PATH checkpoint
    (its ``opt_state`` entry, or the whole tree)."""
    from stability.networks.checkpoints import OPT_STATE, load_params

    if args.optimizer_state is True:
        if from_params is None:
            raise UsageError(
                f"--optimizer-state: the --params checkpoint {args.params!r} holds no "
                f"'{OPT_STATE}' entry (save a dict {{'params': ..., '{OPT_STATE}': ...}}, "
                "or pass --optimizer-state PATH)"
            )
        return from_params
    if not os.path.exists(args.optimizer_state):
        raise UsageError(f"--optimizer-state: checkpoint path does not exist: "
                         f"{args.optimizer_state!r}")  # fmt: skip
    tree = load_params(args.optimizer_state, name="--optimizer-state")
    return tree[OPT_STATE] if OPT_STATE in tree else tree


def _preconditioner(args, opt_state, params):
    """`preconditioner_from_optax` with the command line's options; its errors in the
    flags' names. --b1 is RMSprop's momentum for an RMS state."""
    from stability.curvature.preconditioner import preconditioner_from_optax

    given = {name: getattr(args, dest) for _, dest, name in _OPTIMIZER_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    # The moments' structure is checked against plain (linen or loss) params; an nnx
    # State is matched leaf by leaf by the spectrum.
    like = params if isinstance(params, dict) else None
    try:
        if args.optimizer == "rmsprop" and "b1" in given:
            given["momentum"] = given.pop("b1")
        try:
            return preconditioner_from_optax(opt_state, like, **given)
        except ValueError as err:
            if "b1" not in given or "not an RMSProp hyperparameter" not in str(err):
                raise
            given["momentum"] = given.pop("b1")  # an RMS state: --b1 is its momentum
            return preconditioner_from_optax(opt_state, like, **given)
    except (ValueError, TypeError) as err:
        raise UsageError(_optimizer_words(_one_line(err))) from err


def _optimizer_words(text: str) -> str:
    """`preconditioner_from_optax`'s error in the command line's names."""
    import re

    names = [(name, flag) for flag, _, name in _OPTIMIZER_FLAGS]
    names += [("learning_rate", "--lr"), ("momentum", "--b1")]
    for name, flag in names:
        text = re.sub(rf"(?<![\w-]){name}=", f"{flag} ", text)
        text = re.sub(rf"^{name}\b", flag, text)
    text = re.sub(r"(?<![\w-])kind\b", "--optimizer", text)
    text = text.replace("opt_state", "the optimizer state")
    text = text.replace("params must have", "the optimizer state's moments must fit --params:")
    return f"--optimizer-state: {text}"


def _check_pipeline_options(args):
    """The block-delay spec of ``check`` (None without --stages / --block-delays), its
    flags checked before anything is loaded."""
    from stability.curvature.blocks import Stages
    from stability.theory.pipeline import PIPELINE_SCHEDULES
    from stability.validation import check_int

    if args.stages is None and args.block_delays is None:
        if args.pipeline_schedule is not None:
            raise UsageError("--pipeline-schedule needs --stages P")
        return None
    if args.stages is not None and args.block_delays is not None:
        raise UsageError("give one of --stages and --block-delays, not both")
    for flag, given in (("--tau", args.tau is not None), ("--diloco", args.diloco),
                        ("--optimizer-state", args.optimizer_state is not None),
                        ("--batch-size", args.batch_size is not None),
                        ("--require-minimum", args.require_minimum)):  # fmt: skip
        if given:
            blocks = "--stages" if args.stages is not None else "--block-delays"
            raise UsageError(f"{flag} cannot go with {blocks} (the delays come from it)")
    if args.stages is not None:
        check_int("--stages", args.stages, 1)
        schedule = args.pipeline_schedule or "1f1b"
        choices = tuple(n for n in PIPELINE_SCHEDULES if n != "uniform")
        if schedule not in choices:
            raise UsageError(f"--pipeline-schedule must be one of {choices}; got {schedule!r}")
        return Stages(args.stages, schedule)
    if args.pipeline_schedule is not None:
        raise UsageError("--pipeline-schedule needs --stages P")
    try:
        spec = json.loads(args.block_delays)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"--block-delays must be JSON ({err}); got {args.block_delays!r}"
        ) from None
    if not isinstance(spec, dict) or not spec:
        raise UsageError(
            "--block-delays must be a JSON object of path prefix -> delay, e.g. "
            f'\'{{"Dense_0": 1, "Dense_1": 0}}\'; got {args.block_delays!r}'
        )
    for key, value in spec.items():
        check_int(f"--block-delays[{key!r}]", value, 0)
    return spec


def _cmd_check(args) -> int:
    from stability.validation import check_beta, check_int, check_lr, check_momentum, check_tau

    # The options first, named as typed, before any model or data is loaded.
    local = None
    blocks = _check_pipeline_options(args)  # refuses --tau, --diloco etc. beside it
    if args.diloco:
        local = _check_check_local_sgd_options(args)
    else:
        stray = _given(args, _CHECK_LOCAL_SGD_DEFAULTS)
        if stray:
            raise UsageError(f"{stray[0]} belongs to local SGD / DiLoCo rounds: add --diloco")
        if blocks is None and args.tau is None:
            raise UsageError("--tau is required (the delay), unless --diloco or --stages")
        if blocks is None:
            check_tau(args.tau, "--tau")
    if args.lr is not None:
        check_lr(args.lr, "--lr")
    if args.beta is not None:
        check_beta(args.beta, "--beta")
    if args.momentum is not None:
        check_momentum(args.momentum, "--momentum")
    check_int("--max-hvps", args.max_hvps, minimum=1)
    _check_optimizer_options(args)

    from stability.accessibility import is_accessible
    from stability.networks.checkpoints import restore_training_state
    from stability.networks.models import loss_from_model

    factory = _resolve(args.model, "--model")
    model = factory() if callable(factory) and not _is_module(factory) else factory
    # The data before the checkpoint: a linen model's variable shapes come from
    # one example, so an .npz that does not fit (or would decompress to far more
    # than the model holds) is refused from its zip headers.
    # The loader's warnings are held until the checkpoint has loaded, so that a
    # checkpoint error is still the one line the run prints.
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        data = _load_data(args.data)
        first_batch = _first_batch(data)
    params, stored_opt_state = (
        restore_training_state(args.params, model, train=args.train, data=first_batch)
        if args.params
        else (None, None)
    )
    opt_state = None
    if args.optimizer_state is not None:
        opt_state = _optimizer_state(args, stored_opt_state)
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    announce = params is None
    loss = _resolve(args.loss, "--loss") if args.loss else None
    # The model becomes a loss(params, batch) here, with the data's first batch
    # checked against it; is_accessible then judges that function.
    loss_fn, params = loss_from_model(
        model,
        params,
        loss=loss,
        train=args.train,
        data=data,
        call_kwargs=_call_kwargs(args.call_kwargs),
        batch_keys=tuple(args.batch_keys) if args.batch_keys else None,
    )
    if announce:  # once the model and the data fit together
        print(
            f"stability check: no --params: judging the initial weights that {args.model} "
            "builds (pass --params CHECKPOINT for a trained network)",
            file=sys.stderr,
        )
    extra = {"require_minimum": True} if args.require_minimum else {}
    if opt_state is not None:
        pre = _preconditioner(args, opt_state, params)
        if args.lr is None and pre.lr is None:
            raise UsageError(
                "--lr is required: the optimizer state does not hold the learning rate "
                "(an optax.inject_hyperparams state does)"
            )
        extra["optimizer_state"] = pre
    elif local is not None:
        config, outer_lr, outer_momentum = local
        extra.update(local_sgd=config, outer_lr=outer_lr, outer_momentum=outer_momentum)
    elif blocks is not None:
        extra.update(block_delays=blocks, beta=args.beta or 0.0,
                     momentum=args.momentum or "heavy_ball")  # fmt: skip
    else:
        extra.update(beta=args.beta or 0.0, momentum=args.momentum or "heavy_ball")
    if args.batch_size is not None:
        extra.update(
            batch_size=args.batch_size,
            num_examples=args.num_examples,
            replacement=args.replacement,
        )
    elif args.num_examples is not None or args.replacement:
        given = "--num-examples" if args.num_examples is not None else "--replacement"
        raise UsageError(f"{given} needs --batch-size (the mini-batch size B)")
    report = is_accessible(
        loss_fn,
        params,
        None if local is not None or blocks is not None else args.tau,
        args.lr,
        data=data,
        max_hvps=args.max_hvps,
        progress=not (args.quiet or args.json),
        **extra,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report)
    return 0 if report.verdict is not None else 3


def _is_module(obj) -> bool:
    try:
        from flax import linen, nnx
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, (linen.Module, nnx.Module))


def _cmd_demo(args) -> int:
    from stability.app.demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick)
    return 0


def _cmd_experiment(args) -> int:
    import time

    from stability.app import experiments

    if args.full and args.size not in (None, "full"):
        raise UsageError(f"--full contradicts --size {args.size}")
    size = args.size or ("full" if args.full else "quick")
    start = time.perf_counter()
    if args.name == "adam-eos":
        from stability.app.adam_eos import adaptive_edge_of_stability as run
    elif args.name == "diloco":
        from stability.app.diloco_experiment import diloco_stability_map as run
    elif args.name == "pipeline":
        from stability.app.pipeline_experiment import pipeline_stability as run
    else:
        run = experiments.edge_of_stability if args.name == "eos" else experiments.paper_claims
    result = run(size, progress=not args.quiet)
    paths = experiments.write_outputs(result, args.out)
    print(result.table())
    print("\n" + result.conclusion())
    print(f"\nwrote {paths['json']}, {paths['markdown']}, " + ", ".join(paths["figures"]))
    print(f"stability experiment {args.name} ({size}): {time.perf_counter() - start:.1f} s")
    return 0


def main(argv=None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a one-line usage error (2)
        return int(done.code or 0)
    handlers = {
        "table": _cmd_table,
        "check": _cmd_check,
        "demo": _cmd_demo,
        "experiment": _cmd_experiment,
    }
    previous = _exit_on_ctrl_c(args.command)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print(f"stability {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError) as err:
        print(f"stability {args.command}: error: {_cli_words(_one_line(err))}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError) as err:
        if not _raised_by_library(err):
            if os.environ.get("STABILITY_DEBUG"):
                raise
            return _failure(args.command, err)
        print(f"stability {args.command}: error: {_cli_words(_one_line(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # e.g. a Flax error raised from the user's model
        if os.environ.get("STABILITY_DEBUG"):
            raise
        return _failure(args.command, err)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _exit_on_ctrl_c(command: str):
    """Ctrl-C ends the command at once with one line and exit status 130. The default
    KeyboardInterrupt can arrive inside JAX's C++ code and be swallowed there (a run
    went on to the end and exited 0). Returns the previous handler (None off the main
    thread, where signals cannot be handled)."""

    def interrupted(signum, frame):
        sys.stderr.write(f"stability {command}: interrupted\n")
        sys.stderr.flush()
        os._exit(130)

    try:
        return signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread
        return None


def _failure(command: str, err: BaseException) -> int:
    """Exit status 1: an error in the user's model or a library failure, one line."""
    print(
        f"stability {command}: error: {type(err).__name__}: {_one_line(err)} "
        "(set STABILITY_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


def _raised_by_library(err: BaseException) -> bool:
    """Whether ``err`` is one of the library's own input errors: raised by a ``raise``
    statement in the ``stability`` package (its innermost frame is there), not by
    numpy, JAX or the user's code inside the library's call (a bug or a model error:
    exit status 1, not a one-line input error)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


# Python argument names in the library's advice, as the command line spells them.
_CLI_WORDS = (
    ("pass batch_keys=(input_key, label_key)", "pass --batch-keys INPUT_KEY LABEL_KEY"),
    ("batch_keys=(input_key, label_key)", "--batch-keys INPUT_KEY LABEL_KEY"),
    ("loss=stability.mean_squared_error", "--loss stability:mean_squared_error"),
    ("pass call_kwargs=", "pass --call-kwargs "),
    ("call_kwargs=", "--call-kwargs "),
    ("batch_keys ", "--batch-keys "),
)


def _cli_words(text: str) -> str:
    for python, cli in _CLI_WORDS:
        text = text.replace(python, cli)
    return text


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
