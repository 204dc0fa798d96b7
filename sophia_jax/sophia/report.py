"""The report of a behaviour-model run: counts per stage, caption rewards, yield, skips, speed."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time


@dataclasses.dataclass
class StageTiming:
    seconds: float = 0.0
    items: int = 0  # prompts, or answers judged
    tokens: int = 0  # generated tokens (0 for the verifier)
    kv_peak_tokens: int = 0  # sampling stages: most KV-cache tokens held at once (blocks x block size)
    kv_preempted: int = 0  # sampling stages: samples restarted because the KV budget ran out

    def add_kv_usage(self, usage) -> None:
        """Folds in a sampler's ``kv_usage`` after one ``generate`` call."""
        self.kv_peak_tokens = max(self.kv_peak_tokens, usage.peak_tokens)
        self.kv_preempted += usage.preempted

    def as_dict(self) -> dict:
        out = {"seconds": round(self.seconds, 3), "items": self.items}
        if self.tokens:
            out["tokens"] = self.tokens
            out["tokens_per_second"] = round(self.tokens / self.seconds, 2) if self.seconds else None
            out["kv_peak_tokens"] = self.kv_peak_tokens
            out["kv_preempted"] = self.kv_preempted
        else:
            out["items_per_second"] = round(self.items / self.seconds, 2) if self.seconds else None
        return out


@dataclasses.dataclass
class Report:
    questions_read: int = 0
    questions_in_my_shards: int = 0
    questions_processed: int = 0
    questions_with_selection: int = 0
    shards_total: int = 0
    shards_mine: int = 0
    shards_already_done: int = 0
    shards_written: int = 0
    images_captioned: int = 0
    captions: int = 0
    trajectories: int = 0
    trajectories_correct: int = 0
    trajectories_selected: int = 0
    caption_rewards: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    judge_failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    stages: dict[str, StageTiming] = dataclasses.field(
        default_factory=lambda: {name: StageTiming() for name in ("images", "captions", "reasoning", "verify")}
    )
    started: float = dataclasses.field(default_factory=time.time)

    def skip(self, stage: str, reason: str, message: str, question_id: str | None = None, where: str = "") -> None:
        self.skipped.append(
            {"stage": stage, "reason": reason, "message": message, "id": question_id, "where": where}
        )

    def as_dict(self) -> dict:
        skip_counts = collections.Counter(s["reason"] for s in self.skipped)
        return {
            "counts": {
                "questions_read": self.questions_read,
                "questions_in_my_shards": self.questions_in_my_shards,
                "questions_processed": self.questions_processed,
                "questions_skipped": len([s for s in self.skipped if s["stage"] in ("dataset", "image")]),
                "images_captioned": self.images_captioned,
                "captions": self.captions,
                "trajectories": self.trajectories,
                "trajectories_correct": self.trajectories_correct,
                "trajectories_selected": self.trajectories_selected,
                "questions_with_selection": self.questions_with_selection,
            },
            "shards": {
                "total": self.shards_total,
                "mine": self.shards_mine,
                "already_done": self.shards_already_done,
                "written": self.shards_written,
            },
            "selection_yield": (
                round(self.questions_with_selection / self.questions_processed, 4) if self.questions_processed else None
            ),
            "caption_reward_histogram": {f"{k:.3f}": v for k, v in sorted(self.caption_rewards.items())},
            "judge_failures": dict(self.judge_failures),
            "skipped_counts": dict(skip_counts),
            "skipped": self.skipped,
            "throughput": {name: t.as_dict() for name, t in self.stages.items()},
            "wall_seconds": round(time.time() - self.started, 3),
        }

    def summary(self) -> str:
        d = self.as_dict()
        c, s = d["counts"], d["shards"]
        lines = [
            f"shards: {s['written']} written, {s['already_done']} already done, {s['mine']} of {s['total']} mine",
            f"questions: {c['questions_read']} read, {c['questions_processed']} processed, "
            f"{c['questions_skipped']} skipped {d['skipped_counts'] or ''}",
            f"captions: {c['captions']} for {c['images_captioned']} images; trajectories: {c['trajectories']}, "
            f"correct {c['trajectories_correct']}, selected {c['trajectories_selected']}",
            f"selection yield: {d['selection_yield']} ({c['questions_with_selection']} questions with a kept trajectory)",
            "caption rewards: " + (", ".join(f"{k}: {v}" for k, v in d["caption_reward_histogram"].items()) or "none"),
        ]
        for name, t in d["throughput"].items():
            rate = t.get("tokens_per_second") or t.get("items_per_second")
            lines.append(f"{name}: {t['items']} items in {t['seconds']}s ({rate} {'tok/s' if 'tokens' in t else 'items/s'})")
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.as_dict(), f, indent=2, ensure_ascii=False)
        os.replace(tmp, path)
