"""Apply time: `connpin apply` at 2, 16, 64 and 256 uplinks (first apply, a re-apply that changes
nothing, remove), as a whole command (interpreter start and imports included) and connpin's own
work (what apply reports: lock, observe, diff, changes, verify), against installing the
reference recipe's rules one `iptables`/`ip` command at a time."""

from __future__ import annotations

import re
import sys
import time

import _common as C

NAME = "apply"
OPS = {
    "apply": "connpin apply (first)",
    "reapply": "connpin apply (nothing to change)",
    "remove": "connpin remove",
}


def connpin(b: C.Bench, *args: str) -> tuple[float, float]:
    """(whole command seconds, own work seconds as connpin reports it)."""
    t0 = time.perf_counter()
    p = b.lab.connpin(*args)
    whole = time.perf_counter() - t0
    m = re.search(r"\((\d+) ms\)", p.stdout)
    if not m:
        raise RuntimeError(f"no timing in connpin's output: {p.stdout!r}")
    return whole, int(m.group(1)) / 1000


def main() -> None:
    args = C.parse_args(__doc__)
    C.need("iptables")
    reps = 1 if args.quick else 3
    sizes = (2, 64) if args.quick else C.UPLINKS
    data: dict[tuple[str, int], list[float]] = {}
    with C.Bench(max_uplinks=max(sizes)) as b:
        startup = min(C.timed(lambda: b.lab.exec("router", [sys.executable, "-c", "pass"]))
                      for _ in range(3))
        imports = min(C.timed(lambda: b.lab.exec("router", [
            sys.executable, "-c", "import connpin.cli, connpin.kernel.machine"]))
            for _ in range(3))
        for rep in range(reps):
            for n in sizes:
                for who in C.rotate(["connpin", "recipe"], rep + n):
                    with C.section(f"rep {rep + 1}/{reps}: {n} uplinks, {who}"):
                        if who == "recipe":
                            b.remove()
                            script = b.recipe_commands(n)
                            data.setdefault(("recipe", n), []).append(
                                C.timed(lambda s=script: b.sh(s)))
                            data.setdefault(("recipe_cmds", n), []).append(
                                len(script.splitlines()))
                            b.setup, b.n = "recipe", n
                            b.remove()
                            continue
                        b.remove()
                        b.lab.write_config(b.connpin_config(n))
                        for op, argv in (("apply", ["apply"]), ("reapply", ["apply"]),
                                         ("remove", ["remove"])):
                            whole, own = connpin(b, *argv)
                            data.setdefault((f"{op}_whole", n), []).append(whole)
                            data.setdefault((f"{op}_own", n), []).append(own)
    report(args.out, data, sizes, reps, startup, imports)


def report(out, data, sizes, reps, startup: float, imports: float) -> None:
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    rows, trows = [], []
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for n in sizes:
        for op, label in OPS.items():
            own, whole = data[(f"{op}_own", n)], data[(f"{op}_whole", n)]
            mo, mw = C.summary(own), C.summary(whole)
            trows.append([n, label, ms(mo[0]), C.spread(own), ms(mw[0]), C.spread(whole)])
            rows.append([n, op, len(own), f"{mo[0]:.4f}", f"{mo[1]:.4f}", f"{mo[2]:.4f}",
                         f"{mw[0]:.4f}", f"{mw[1]:.4f}", f"{mw[2]:.4f}"])
            if op != "remove":
                series.setdefault(f"{label}: own work", []).append((n, *mo))
                series.setdefault(f"{label}: whole command", []).append((n, *mw))
        rec = data[("recipe", n)]
        mr = C.summary(rec)
        cmds = data[("recipe_cmds", n)][0]
        trows.append([n, f"recipe, {cmds} commands one by one", "-", "-", ms(mr[0]),
                      C.spread(rec)])
        rows.append([n, "recipe", len(rec), "", "", "", f"{mr[0]:.4f}", f"{mr[1]:.4f}",
                     f"{mr[2]:.4f}"])
        series.setdefault("recipe, one command at a time", []).append((n, *mr))
    text = C.table(["uplinks", "what", "own work", "spread", "whole command", "spread"], trows)
    note = (f"Interpreter start: {ms(startup)}; importing connpin's CLI and kernel adapters: "
            f"{ms(imports)} (both included in *whole command*).")
    print(f"\nApply time\n{text}\n{note}")
    C.write_csv(out, NAME, ["uplinks", "what", "reps", "own_median_s", "own_min_s", "own_max_s",
                            "whole_median_s", "whole_min_s", "whole_max_s"], rows)
    C.plot(out, NAME, "time to install / re-apply", "seconds", series, ref=None, logy=True)
    C.write_md(out, NAME, (
        "## Apply time\n\n"
        f"{reps} repetition(s), interleaved; median (± half the range). *own work* is what "
        "connpin reports (lock, observe, diff, changes, verify); *whole command* is the "
        "wall time of `connpin --netns ... apply` from a shell, interpreter start and imports "
        f"included. The recipe's rules are installed by `sh` one command at a time.\n\n{text}\n"
        f"{note}\n\n![{NAME}]({NAME}.png)\n"))


if __name__ == "__main__":
    main()
