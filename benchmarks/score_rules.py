"""Throughput of the rule-based scorer (core/scored/metrics.py) on synthetic conversations.

Run: ``.venv/bin/python benchmarks/score_rules.py [--n 100000]``. Prints one row per stage
(conversations/s, wall seconds) and the figures the brief asks for (target: >= 50,000
conversations/s for the per-conversation rule metrics at 100k).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

import polars as pl

from vlit_assets.core.scored.figures import rule_figures
from vlit_assets.core.scored.metrics import (
    format_check,
    norm_text_hash,
    score_rules,
)
from vlit_assets.core.text.categories import COCO_CATEGORIES
from vlit_assets.core.text.inflect import plural
from vlit_assets.core.text.reading import mentions_long, qa_pairs, turns_long

TURNS = pl.List(pl.Struct({"from": pl.String, "value": pl.String}))
NAMES = [name for _, name, _ in COCO_CATEGORIES]
NUMBERS = ["one", "two", "three", "four", "five", "six"]
COLOURS = ["red", "blue", "green", "white", "black", "brown", "yellow"]
PLACES = ["on the left", "near the center", "in the background", "on the right", "up front"]
QUESTIONS = [
    "What do you see in this image?",
    "Describe the scene in detail.",
    "Why might the {a} be here?",
    "What could happen next?",
    "How many {p} are there?",
    "Where is the {a} located?",
]


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def synthetic(
    n: int, *, n_images: int = 5000, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(conversations, objects, tags) frames shaped like generated__conversations / raw__*."""
    rng = random.Random(seed)
    objects: list[dict] = []
    present: dict[str, dict[str, int]] = {}
    for i in range(n_images):
        image_id = f"img_{i}"
        cats = rng.sample(NAMES, rng.randint(1, 4))
        present[image_id] = {c: rng.randint(1, 4) for c in cats}
        for c, k in present[image_id].items():
            for j in range(k):
                objects.append(
                    {
                        "object_id": f"obj_{i}_{c}_{j}",
                        "image_id": image_id,
                        "category_name": c,
                        "iscrowd": False,
                    }
                )
    tags = pl.DataFrame(
        {
            "image_id": list(present),
            "present": [
                [{"category_id": 0, "name": c, "count": k} for c, k in p.items()]
                for p in present.values()
            ],
        }
    )
    rows = []
    for k in range(n):
        image_id = f"img_{rng.randrange(n_images)}"
        cats = present[image_id]
        kind = ("global", "negative", "region")[k % 3]
        rows.append(_conversation(rng, k, image_id, cats, kind))
    conversations = pl.DataFrame(
        rows,
        schema={
            "conversation_id": pl.String,
            "source": pl.String,
            "image_id": pl.String,
            "instruction_type": pl.String,
            "turns": TURNS,
            "region_object_id": pl.String,
        },
    )
    return conversations, pl.DataFrame(objects), tags


def _conversation(
    rng: random.Random, k: int, image_id: str, cats: dict[str, int], kind: str
) -> dict:
    main = rng.choice(list(cats))
    absent = rng.choice([c for c in NAMES if c not in cats])
    count = cats[main]
    turns = [("human", "<image>\n" + rng.choice(QUESTIONS).format(a=main, p=plural(main)))]
    noun = plural(main) if count > 1 else main
    turns.append(
        (
            "gpt",
            f"There {'are' if count > 1 else 'is'} {NUMBERS[count - 1]} {rng.choice(COLOURS)} "
            f"{noun} {rng.choice(PLACES)}. The scene looks calm and the light is soft, "
            f"with details {k} worth noting.",
        )
    )
    if kind == "negative":
        turns += [
            ("human", f"Is there {_article(absent)} in the picture?"),
            ("gpt", f"No, there is no {absent} in the picture."),
        ]
    for extra in list(cats)[:2]:
        turns += [
            ("human", f"What can you say about the {extra}?"),
            ("gpt", f"The {extra} is {rng.choice(COLOURS)} and sits {rng.choice(PLACES)}."),
        ]
    region = f"obj_{image_id[4:]}_{main}_0" if kind == "region" else None
    return {
        "conversation_id": f"conv_{k}",
        "source": "bench",
        "image_id": image_id,
        "instruction_type": kind,
        "turns": [{"from": f, "value": v} for f, v in turns],
        "region_object_id": region,
    }


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall seconds and best process CPU seconds (all threads) over ``repeat`` runs.

    CPU seconds barely move when other processes load the machine, so n / cpu_seconds is a
    load-independent floor for the throughput of one core.
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def run_rules_bench(n: int = 100_000, repeat: int = 3, seed: int = 0) -> list[dict]:
    """One row per stage: stage, n, seconds, cpu_seconds (best of ``repeat``), throughputs.

    Component stages run on the row-number-keyed frame that score_rules uses internally.
    """
    conversations, objects, tags = synthetic(n, seed=seed)
    keyed = conversations.with_columns(conversation_id=pl.int_range(pl.len(), dtype=pl.UInt32))
    turns = turns_long(keyed)
    scores = score_rules(conversations, objects, tags)
    stages: list[tuple[str, Callable[[], object]]] = [
        ("turns_long (explode, negation scopes)", lambda: turns_long(keyed)),
        ("mentions_long (category mentions)", lambda: mentions_long(turns)),
        ("qa_pairs (polar, denial)", lambda: qa_pairs(turns)),
        ("format_check", lambda: format_check(keyed)),
        ("norm_text_hash", lambda: norm_text_hash(keyed)),
        ("score_rules (all per-conversation)", lambda: score_rules(conversations, objects, tags)),
        ("rule_figures", lambda: rule_figures(conversations, scores)),
        (
            "score_rules + rule_figures",
            lambda: rule_figures(conversations, score_rules(conversations, objects, tags)),
        ),
    ]
    rows = []
    for name, fn in stages:
        seconds, cpu_seconds = _timed(fn, repeat)
        rows.append(
            {
                "stage": name,
                "n": n,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "conversations_per_s": n / seconds,
                "conversations_per_cpu_s": n / cpu_seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = run_rules_bench(args.n, args.repeat)
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores")
    print(f"{'stage':<40} {'n':>8} {'wall s':>8} {'cpu s':>8} {'conv/s':>10} {'conv/cpu-s':>11}")
    for r in rows:
        print(
            f"{r['stage']:<40} {r['n']:>8} {r['seconds']:>8.3f} {r['cpu_seconds']:>8.3f} "
            f"{r['conversations_per_s']:>10,.0f} {r['conversations_per_cpu_s']:>11,.0f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
