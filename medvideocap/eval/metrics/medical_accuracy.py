"""``medical_accuracy``: a vision-language judge scores each video against its prompt with a versioned
medical rubric (anatomy, procedure steps, instruments, safety-relevant errors), 1-5 per criterion.

Why it is shaped this way:

* The judge is one of the caption backends: an OpenAI-compatible server through
  :class:`~medvideocap.caption.openai_api.OpenAICaptioner` (the default; endpoint and key as ``recaption``
  takes them), or a local VLM through :class:`~medvideocap.caption.local.TransformersCaptioner`. Retries,
  the request deadline, the reply-size cap and keeping the key out of every message are theirs, not
  copied here. The backend is asked for one raw reply (its ``ask``), not for a caption: a caption's
  template, hygiene and re-asks do not apply to a verdict.
* The rubric is a shipped text file, sent verbatim as the system message; its name is its version and
  its sha256 is recorded. :meth:`MedicalAccuracy.info` lists it beside the judge model as a model role
  whose revision is that hash, so ``eval.json`` refuses to mix two rubrics (or two judges) in one folder,
  as it does two metric weights. A wording change is a new file, ``medical_accuracy_v2.txt``.
* The judge sees :data:`DEFAULT_FRAMES` frames picked by the project's one "evenly spaced" rule
  (:func:`medvideocap.media.frames.even_times`, what :func:`medvideocap.caption.sampling.sample_frames`
  takes from a file), applied to the decoded video the runner hands every metric: the same frames
  ``sample_frames`` would read from the mp4 (tests/test_eval_medical_accuracy.py compares them).
* A reply that is not a verdict (a refusal, no JSON, a criterion missing or not a number, a score
  outside 1-5, markup) raises :class:`~medvideocap.eval.metrics.base.Unscored` with the raw reply: the
  runner counts and lists it and leaves it out of the mean, never scores it 0. A backend that gives no
  reply at all (server down, HTTP 4xx, retries spent, out of memory) is a :class:`MetricError`: the run
  stops, and a rerun resumes from the journal.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from medvideocap.caption.openai_api import DEFAULT_MODEL as SERVED_DEFAULT_MODEL
from medvideocap.eval.metrics.base import Metric, MetricError, Unscored, check_video, model_revision

if TYPE_CHECKING:
    from medvideocap.caption.base import BaseCaptioner

#: The rubric's version: the name of its file under ``medvideocap/eval/rubrics/``.
RUBRIC_VERSION = "medical_accuracy_v1"
#: The criteria, as the rubric names them and the reply's ``scores`` object keys them.
CRITERIA = ("anatomy", "procedure", "instruments", "safety")
#: The rubric's scale: integers from 1 (worst) to 5 (best).
SCALE = (1, 5)
#: Frames the judge sees: what ``recaption`` shows a captioner (the MedVideoCap paper showed GPT-4o 8).
DEFAULT_FRAMES = 8
#: Backends the judge can run on, as ``--judge-backend`` names them (those of ``recaption --backend``).
BACKENDS = ("openai", "transformers")
#: Greedy and long enough for four scores and three sentences of justification.
PARAMS: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": 600}


def load_rubric(version: str = RUBRIC_VERSION) -> tuple[str, str]:
    """The rubric's text and the sha256 of its bytes. A rubric that no longer names every criterion
    (an edit gone wrong) is refused: its verdicts could not be read."""
    data = (resources.files("medvideocap.eval") / "rubrics" / f"{version}.txt").read_bytes()
    text = data.decode("utf-8")
    missing = [c for c in CRITERIA if f'"{c}"' not in text]
    if missing:
        raise MetricError(
            f"rubric {version}.txt does not ask for the criteria {missing} in its reply format; every one "
            f"of {list(CRITERIA)} must appear there quoted"
        )
    return text, hashlib.sha256(data).hexdigest()


def frame_indices(num_frames: int, n: int = DEFAULT_FRAMES) -> list[int]:
    """Which of ``num_frames`` decoded frames the judge sees: for each instant of
    :func:`~medvideocap.media.frames.even_times` (in frame units, frame ``i`` shown from ``i`` to
    ``i + 1``), the frame nearest it, the earlier one on a tie as the decoder picks; each frame once."""
    from medvideocap.media.frames import even_times

    picked = [min(num_frames - 1, math.ceil(t - 0.5)) for t in even_times(0.0, float(num_frames), n)]
    return list(dict.fromkeys(picked))


def user_message(prompt: str, num_frames: int) -> str:
    """What follows the frames in the user turn: how many there are, and the prompt as a JSON string
    (quoted and escaped, so a prompt cannot pass for the end of the message)."""
    return (
        f"The {num_frames} images above are evenly spaced frames of the video, in order. "
        f"The text prompt it was generated from: {json.dumps(prompt, ensure_ascii=False)}"
    )


def read_verdict(raw: str) -> tuple[dict[str, int], str]:
    """The criterion scores and justification of one reply, or :class:`Unscored` saying why there are
    none. The first JSON object in the reply counts (text or a code fence around it is allowed);
    a score is an integer on :data:`SCALE`, written as a JSON number."""
    from medvideocap.caption.hygiene import HygieneError, is_refusal, screen_reply

    try:
        text = screen_reply(raw).strip()
    except HygieneError as exc:
        raise Unscored("markup", str(exc).removeprefix("markup: ")) from exc
    if not text:
        raise Unscored("unparseable", "empty reply")
    verdict: Any = None
    start = text.find("{")
    if start >= 0:
        try:
            verdict, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            verdict = None
    scores = verdict.get("scores") if isinstance(verdict, dict) else None
    if not isinstance(scores, dict):
        if is_refusal(text):
            raise Unscored("refusal", f"the judge declined: {text[:160]!r}")
        what = "no JSON object" if verdict is None else "a JSON reply without a 'scores' object"
        raise Unscored("unparseable", f"{what}: {text[:160]!r}")
    missing = [c for c in CRITERIA if c not in scores]
    if missing:
        raise Unscored("unparseable", f"'scores' lacks {missing}: {json.dumps(scores)[:160]}")
    low, high = SCALE
    found: dict[str, int] = {}
    for criterion in CRITERIA:
        value = scores[criterion]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unscored("unparseable", f"{criterion} is {value!r}, not a number")
        if not math.isfinite(value) or value != int(value) or not low <= value <= high:
            raise Unscored("out_of_range", f"{criterion} is {value!r}, not an integer from {low} to {high}")
        found[criterion] = int(value)
    justification = verdict.get("justification")
    return found, justification if isinstance(justification, str) else ""


class MedicalAccuracy(Metric):
    name = "medical_accuracy"
    definition = (
        "a vision-language judge (the caption backends: an OpenAI-compatible server or a local VLM) sees "
        f"{DEFAULT_FRAMES} evenly spaced frames and the prompt and scores the video with the rubric "
        f"{RUBRIC_VERSION} on {', '.join(CRITERIA)} (safety: safety-relevant errors), each an integer "
        f"{SCALE[0]}-{SCALE[1]}, with a short justification"
    )
    normalisation = (
        f"each criterion (s - {SCALE[0]}) / {SCALE[1] - SCALE[0]}, mean of the {len(CRITERIA)}; a reply that "
        "is no verdict (refusal, unparseable, a score out of range) leaves the video unscored: listed in the "
        "report, left out of the means, never counted as 0"
    )
    relation_to_vbench = (
        "not a VBench dimension and not in the total: a model's judgement of medical content, which no "
        "VBench-style tool measures; each verdict's raw reply, judge and rubric hash are kept in the journal."
    )
    default_models = {"": SERVED_DEFAULT_MODEL}  # the transformers backend's default replaces it there

    def __init__(
        self,
        models: dict[str, str] | None = None,
        *,
        device: str | None = None,
        backend: str = "openai",
        endpoint: str | None = None,
        api_key_env: str | None = None,
        frames: int = DEFAULT_FRAMES,
        timeout: float = 120.0,
        max_retries: int = 5,
    ) -> None:
        super().__init__(models, device=device)
        if backend not in BACKENDS:
            raise MetricError(f"judge backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend != "openai" and (endpoint or api_key_env):
            raise MetricError(
                "--judge-endpoint and --judge-api-key-env are for the openai judge backend, not "
                f"{backend!r}: leave them out, or use --judge-backend openai"
            )
        if frames < 1:
            raise MetricError(f"{self.name}: frames must be at least 1, got {frames}")
        if backend == "transformers" and not (models or {}).get(""):
            from medvideocap.caption.local import DEFAULT_MODEL

            self.models[""] = DEFAULT_MODEL
        self.backend = backend
        self.frames = frames
        self.rubric, self.rubric_sha256 = load_rubric()
        self._options: dict[str, Any] = {"model": self.models[""], "hygiene_retries": 0}
        if backend == "openai":
            from medvideocap.caption.openai_api import DEFAULT_ENDPOINT

            self.endpoint: str | None = endpoint or DEFAULT_ENDPOINT
            self._options.update(
                endpoint=self.endpoint,
                api_key_env=api_key_env,
                concurrency=1,  # the runner scores one video at a time
                timeout=timeout,
                max_retries=max_retries,
            )
        else:
            self.endpoint = None
            self._options["device"] = self.device
        self._judge: BaseCaptioner | None = None
        if backend == "openai":  # cheap (no request yet), and a missing key fails before any video is made
            self._judge = self._make_judge()

    def _make_judge(self) -> BaseCaptioner:
        from medvideocap.caption.base import make_captioner

        try:
            return make_captioner(self.backend, **self._options)
        except ValueError as exc:  # the backend's own words: which variable or option to set
            raise MetricError(f"{self.name} judge: {exc}") from exc

    def info(self) -> dict[str, Any]:
        """The base record's fields, with the rubric listed as a model role (its hash as the revision) so
        a folder never mixes two rubrics, and the judge's backend, endpoint and frame count. A served
        model's revision is "served": the base would look its id up on the Hub, and a server does not
        say which weights answer (each reply's ``system_fingerprint`` is journalled instead)."""
        model = self.models[""]
        revision = model_revision(model) if self.backend == "transformers" else "served"
        return {
            "name": self.name,
            "definition": self.definition,
            "normalisation": self.normalisation,
            "relation_to_vbench": self.relation_to_vbench,
            "models": {
                "model": {"id": model, "revision": revision},
                "rubric": {"id": RUBRIC_VERSION, "revision": f"sha256:{self.rubric_sha256}"},
            },
            "judge": {"backend": self.backend, "endpoint": self.endpoint, "frames": self.frames},
        }

    def assess(self, video: np.ndarray, prompt: str) -> tuple[float, dict[str, Any]]:
        from PIL import Image

        from medvideocap.caption.hygiene import reply_head, strip_controls

        frames = check_video(video, metric=self.name)
        picked = frame_indices(len(frames), self.frames)
        judge = self._judge = self._judge or self._make_judge()
        reply = judge.ask(
            user_message(prompt, len(picked)),
            [Image.fromarray(frames[i]) for i in picked],
            system=self.rubric,
            params=dict(PARAMS),
            format="json",
            name=self.name,  # a backend names the request by it in its logs
        )
        if reply.text is None:
            raise MetricError(
                f"{self.name}: the judge {self.models['']!r} gave no reply: {reply.error}; check the judge "
                "(--judge-endpoint, its key, --metric-model) and rerun: finished scores are kept"
            )
        raw = strip_controls(reply.text)
        record: dict[str, Any] = {
            "judge": {"backend": self.backend, "model": self.models[""], "fingerprint": reply.revision},
            "rubric": {"version": RUBRIC_VERSION, "sha256": self.rubric_sha256},
            "frames": picked,
            "raw": raw,
        }
        try:
            scores, justification = read_verdict(raw)
        except Unscored as exc:
            if exc.kind == "markup":  # as for a caption: only the start of such a reply is kept
                record["raw"] = reply_head(raw)
            exc.record.update(record)
            raise
        low, high = SCALE
        value = float(np.mean([(scores[c] - low) / (high - low) for c in CRITERIA]))
        return value, {**record, "scores": scores, "justification": justification}

    def score(self, video: np.ndarray, prompt: str) -> float:
        return self.assess(video, prompt)[0]
