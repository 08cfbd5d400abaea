"""`vidsearch evaluate`: recall of appearance, of each expert alone and of their fusion, on a generated corpus whose
content is known, through the real ingest and search path.

The corpus: every clip shows a coloured shape (what a briefly trained tiny CLIP of colours and shapes, built here as
the tests build theirs, can see); a third of the clips are *speech* clips, each saying a distinct sentence (festival),
a third *text* clips, each showing two distinct words (Pillow), and the rest *appearance* clips. Each clip also
carries distractor content of the other kinds: a sentence nobody asks for, words nobody asks for, and its picture.
The clips are ingested by the real worker with the default experts on (its own data folder, its own embedded Milvus
Lite), then three kinds of queries are asked: appearance ("a red circle"; relevant: every clip showing a red
circle), speech (a phrase of a sentence, some partial; relevant: the clip that said it) and text (the words, part of
them, or one misread; relevant: the clip that showed them). Each kind is split (seeded) into a tuning half, on which
the fusion's weights and appearance calibration are chosen, and a held-out half, on which every figure is reported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ingest.experts.speech import describe_asr
from schema.settings import Settings
from search_app import fusion
from search_app.eval_corpus import (
    COLOURS,
    RATE,
    SHAPES,
    draw_text,
    render_frame,
    speak,
    speech_track,
    write_audio_video,
)

log = logging.getLogger(__name__)

KINDS = ("appearance", "speech", "text")
MIN_CLIPS = 60
MIN_QUERIES = 50
# The test runs a smaller evaluation: these minimums are lowered only through this variable.
MINIMUMS_ENV = "VIDSEARCH_EVALUATE_MINIMUMS"
SIZE = 256  # pixels, square: the tiny CLIP sees the whole frame, OCR reads 20 px words on it
FPS = 4
CLIP_SECONDS = 6.0
# Goal (issue): fused loses at most one appearance-only query in fifty against appearance alone.
APPEARANCE_SLACK = 1 / 50

# Grid searched on the tuning half: speech's and text's weight relative to appearance's (1), and APPEARANCE_Z0.
GRID_WEIGHTS = (0.5, 1.0, 2.0, 4.0)
GRID_Z0 = (1.5, 2.5, 3.5)

# Words of the spoken sentences: each list entry is used by one sentence only, so a partial phrase names one clip.
# None is near a colour, a shape, a caption word or another list's word (checked by _check_vocabulary).
SUBJECTS = ("farmer", "doctor", "teacher", "pilot", "sailor", "baker", "lawyer", "soldier", "painter", "jockey",
            "nurse", "singer", "hunter", "fireman", "miner", "writer", "student", "captain", "dancer", "surgeon",
            "plumber", "mechanic", "monkey", "chicken", "rabbit", "tiger", "horse", "turtle", "giant", "wizard",
            "sheriff", "prince", "mayor", "judge", "coach", "priest", "janitor", "worker", "guard", "nephew")
VERBS = ("carried", "polished", "cleaned", "opened", "lifted", "dropped", "pushed", "watched", "followed", "counted",
         "moved", "stirred", "fixed", "bought", "tossed", "found", "broke", "wrapped", "hid", "stole",
         "chased", "kicked", "pulled", "grabbed", "folded", "tasted", "weighed", "measured", "mended", "loaded",
         "planted", "scrubbed", "rolled", "signed", "shook", "filled", "emptied", "dragged", "buried", "called")
OBJECTS = ("pitcher", "ladder", "letter", "bottle", "window", "trumpet", "ribbon", "hammer", "wagon", "kettle",
           "jacket", "pillow", "mirror", "bucket", "candle", "carpet", "pencil", "rocket", "camera", "saddle",
           "piano", "violin", "anchor", "barrel", "helmet", "wallet", "pumpkin", "lemon", "tomato", "potato",
           "cabbage", "carrot", "onion", "cheese", "butter", "cookie", "sandwich", "turkey", "salmon", "pepper")
PLACES = ("kitchen", "garden", "harbor", "market", "station", "library", "village", "chapel", "forest", "valley",
          "island", "castle", "prison", "museum", "hospital", "factory", "office", "theater", "stadium", "airport",
          "desert", "jungle", "mountain", "river", "beach", "tunnel", "bridge", "palace", "temple", "school",
          "church", "hotel", "cellar", "attic", "garage", "barn", "cottage", "meadow", "canyon", "city")
# Words shown on screen: two per clip, uppercase, unlike any spoken word.
SHOWN = ("KESTREL", "MAGNOLIA", "VORTEX", "ZEPHYR", "QUASAR", "NEBULA", "FALCON", "OBSIDIAN", "JUNIPER", "COBALT",
         "SAFFRON", "TUNDRA", "MONSOON", "GALAXY", "PHOENIX", "WALRUS", "GLACIER", "LANTERN", "ORCHID", "PYRAMID",
         "BISCUIT", "HORIZON", "NOVEMBER", "OCTOPUS", "PENGUIN", "QUARTZ", "SPHINX", "TORNADO", "UMBRELLA", "VOLCANO",
         "WHISTLE", "XYLOPHONE", "YOGURT", "ZODIAC", "ALMANAC", "BAZAAR", "CACTUS", "DYNAMO", "ECLIPSE", "FJORD",
         "GONDOLA", "HAMMOCK", "IGLOO", "JAGUAR", "KAYAK", "LAGOON", "MAMMOTH", "NECTAR", "OASIS", "PAPRIKA",
         "QUIVER", "RADISH", "SCARAB", "TAPIR", "UTOPIA", "VELVET", "WOMBAT", "YONDER", "ZIRCON", "AVALANCHE",
         "BOOMERANG", "CARAVAN", "DOLPHIN", "EMERALD", "FLAMINGO", "GAZELLE", "HALIBUT", "IBIS", "JASMINE", "KOALA",
         "LOBSTER", "MARMALADE", "NUTMEG", "OSPREY", "PELICAN", "RHUBARB", "SARDINE", "TOUCAN", "VULTURE", "WAFFLE")
CAPTIONS = ("a {c} {s}", "the {c} {s}", "{c} {s}", "a video of a {c} {s}", "video of the {c} {s}")
# Letters OCR confuses, for misread text queries.
MISREAD = {"O": "0", "I": "1", "E": "F", "B": "8", "S": "5", "A": "R", "N": "M", "L": "I", "U": "V", "C": "G",
           "R": "P", "T": "I", "M": "N", "H": "N", "K": "X", "G": "C", "P": "R", "D": "O"}


@dataclass(frozen=True)
class Plan:
    clips: int = MIN_CLIPS
    queries_per_kind: int = MIN_QUERIES
    seed: int = 0
    seconds: float = CLIP_SECONDS
    long_minutes: float = 10.0  # the memory figure's long video


@dataclass
class Clip:
    name: str
    kind: str  # which query kind it is the target of
    colour: str
    shape: str
    said: str | None = None  # the sentence on its audio track
    shown: str | None = None  # the words on screen
    path: Path | None = None
    video_id: int | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class Query:
    kind: str
    text: str
    relevant: frozenset[str]  # clip names
    variant: str  # what sort of query (full, partial, misread, caption template)


@dataclass
class Figures:
    hits1: list[bool] = field(default_factory=list)
    hits5: list[bool] = field(default_factory=list)

    def add(self, ranked: Sequence[str], relevant: frozenset[str]) -> None:
        self.hits1.append(bool(ranked[:1]) and ranked[0] in relevant)
        self.hits5.append(any(name in relevant for name in ranked[:5]))

    def as_dict(self) -> dict:
        n = len(self.hits1)
        return {"recall_at_1": round(sum(self.hits1) / n, 4) if n else None,
                "recall_at_5": round(sum(self.hits5) / n, 4) if n else None, "queries": n,
                "hits_at_1": sum(self.hits1)}


# -------------------------------------------------------------------------------------------------- corpus


def _check_vocabulary() -> None:
    """No two vocabulary words may match each other as fusion matches words (exactly, as a prefix, nearly), nor a
    colour, shape or caption word: else a query of one kind would find another kind's clips by its words."""
    spoken = [*SUBJECTS, *VERBS, *OBJECTS, *PLACES]
    shown = [w.lower() for w in SHOWN]
    reserved = [*COLOURS, *SHAPES, "video"]
    everything = spoken + shown + reserved
    if len(set(everything)) != len(everything):
        raise AssertionError("a vocabulary word is listed twice")
    for a, b in itertools.permutations(everything, 2):
        if fusion._word_matches(a, [b]):
            raise AssertionError(f"vocabulary words {a!r} and {b!r} would match each other")


def sentence(j: int) -> str:
    n = len(SUBJECTS)
    subject, verb = SUBJECTS[j % n], VERBS[(7 * j + 3) % n]
    obj, place = OBJECTS[(11 * j + 5) % n], PLACES[(13 * j + 1) % n]
    return f"the {subject} {verb} the {obj} in the {place}"


def shown_words(j: int) -> str:
    n = len(SHOWN) // 2
    return f"{SHOWN[j % n]} {SHOWN[n + (3 * j + 1) % n]}"


def plan_corpus(plan: Plan) -> list[Clip]:
    """Which clip shows, says and writes what. Target sentences and words come first in their lists, distractors
    after them, so no distractor repeats a target."""
    rng = random.Random(plan.seed)
    n_speech = plan.clips // 3
    n_text = plan.clips // 3
    n_app = plan.clips - n_speech - n_text
    combos = list(itertools.product(COLOURS, SHAPES))
    rng.shuffle(combos)
    kinds = ["appearance"] * n_app + ["speech"] * n_speech + ["text"] * n_text
    said = itertools.count(n_speech)  # distractor sentences: after the targets
    shown = itertools.count(n_text)
    clips = []
    counts = dict.fromkeys(KINDS, 0)
    for i, kind in enumerate(kinds):
        colour, shape = combos[i % len(combos)]
        k = counts[kind]
        counts[kind] += 1
        clip = Clip(f"{kind}_{k:03d}", kind, colour, shape)
        if kind == "speech":
            clip.said = sentence(k)
            clip.shown = shown_words(next(shown)) if k % 2 == 0 else None
        elif kind == "text":
            clip.shown = shown_words(k)
            clip.said = sentence(next(said)) if k % 2 == 0 else None
        else:  # appearance: some say, some show, some both, some neither
            clip.said = sentence(next(said)) if k % 4 in (0, 1) else None
            clip.shown = shown_words(next(shown)) if k % 4 in (1, 2) else None
        clips.append(clip)
    if next(said) > len(SUBJECTS) or next(shown) > len(SHOWN) // 2:
        log.warning("more clips than distinct sentences or words: some repeat, and some queries have several "
                    "matching clips")
    return clips


def write_clip(clip: Clip, folder: Path, voice: Path, seconds: float) -> Path:
    """The clip as an MP4 (H.264 + AAC): its picture still (a shape of its own jitter), its words from 1 s to the
    end, its sentence from 1 s (the clip lengthened to hold it)."""
    jitter = int.from_bytes(clip.name.encode(), "little") % 10_000
    picture = render_frame(clip.colour, clip.shape, SIZE, jitter=jitter)
    captioned = draw_text(picture, clip.shown.split(), font_size=20, centre=0.86) if clip.shown else picture
    phrases = []
    if clip.said:
        samples = speak(clip.said, voice)
        seconds = max(seconds, 1.0 + len(samples) / RATE + 1.0)
        phrases.append((1.0, samples))
    track = speech_track(phrases, seconds)
    path = folder / f"{clip.name}.mp4"

    def frames(i: int) -> np.ndarray:
        return captioned if clip.shown and i >= FPS else picture

    write_audio_video(path, track, fps=FPS, frames=frames)
    clip.path, clip.duration = path, seconds
    return path


def _misread(word: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(word) if ch in MISREAD and 0 < i < len(word) - 1]
    i = rng.choice(spots) if spots else len(word) // 2
    return word[:i] + MISREAD.get(word[i], "X") + word[i + 1 :]


def make_queries(clips: Sequence[Clip], per_kind: int, seed: int) -> list[Query]:
    """`per_kind` queries of each kind, cycling over the target clips and, for each, over kinds of phrasing."""
    rng = random.Random(seed + 1)
    queries: list[Query] = []
    by_picture: dict[tuple[str, str], set[str]] = {}
    for clip in clips:
        by_picture.setdefault((clip.colour, clip.shape), set()).add(clip.name)
    captions = [(c, s, t) for t in range(len(CAPTIONS)) for c, s in sorted(by_picture)]
    for i in range(per_kind):
        c, s, t = captions[i % len(captions)]
        queries.append(Query("appearance", CAPTIONS[t].format(c=c, s=s), frozenset(by_picture[(c, s)]),
                             f"caption {t}"))
    speakers = [c for c in clips if c.kind == "speech"]
    for i in range(per_kind):
        clip = speakers[i % len(speakers)]
        variant = (i // len(speakers)) % 4
        _the, subject, verb, _the2, obj, _in, _the3, place = clip.said.split()
        text, name = [(clip.said, "full sentence"), (f"the {subject} {verb} the {obj}", "first half"),
                      (f"{obj} in the {place}", "second half"), (f"{subject} {place}", "two words")][variant]
        queries.append(Query("speech", text, frozenset({clip.name}), name))
    writers = [c for c in clips if c.kind == "text"]
    for i in range(per_kind):
        clip = writers[i % len(writers)]
        variant = (i // len(writers)) % 4
        first, second = clip.shown.split()
        text, name = [(clip.shown.lower(), "both words"), (first, "one word"),
                      (second[: max(4, len(second) - 3)].lower(), "prefix"),
                      (f"{_misread(first, rng)} {second}", "one letter misread")][variant]
        queries.append(Query("text", text, frozenset({clip.name}), name))
    return queries


def split(queries: Sequence[Query], seed: int) -> tuple[list[Query], list[Query]]:
    """Each kind halved at random (seeded): (tuning, held out)."""
    rng = random.Random(seed + 2)
    tuning, held = [], []
    for kind in KINDS:
        mine = [q for q in queries if q.kind == kind]
        rng.shuffle(mine)
        tuning += mine[: len(mine) // 2]
        held += mine[len(mine) // 2 :]
    return tuning, held


# ------------------------------------------------------------------------------------------------- measure


class _Memo:
    """A read-only view of an object whose named methods remember their answers (the library does not change while
    the tuning grid runs, so each query's candidates are fetched once, not once per grid point)."""

    def __init__(self, inner, methods: Sequence[str]) -> None:
        self._inner = inner
        self._cache: dict = {}
        for name in methods:
            setattr(self, name, self._remember(name))

    def _remember(self, name: str) -> Callable:
        method = getattr(self._inner, name)

        def call(*args, **kwargs):
            key = (name, _key(args), _key(tuple(sorted(kwargs.items()))))
            if key not in self._cache:
                self._cache[key] = method(*args, **kwargs)
            return self._cache[key]

        return call

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _key(value):
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _key(v)) for k, v in sorted(value.items()))
    return value


@dataclass
class Searcher:
    """Runs the product's search_text with chosen experts, weights and calibration, as names of clips."""

    catalog: object
    store: object
    encoder: object
    experts: dict
    names: dict[int, str]  # video id -> clip name

    def rank(self, query: str, mode: str, *, weights: dict | None = None,
             calibration: fusion.Calibration | None = None, moments: bool = False) -> list[str]:
        from search_app.search import search_text

        moment_seconds = None if not moments else self.catalog_moment_seconds
        if mode == "appearance":
            results = search_text(self.catalog, self.store, self.encoder, query, 5, moment_seconds=moment_seconds)
        elif mode in self.experts:  # this expert alone: the others weigh 0
            alone = {fusion.APPEARANCE: 0.0, **{e: 0.0 for e in self.experts}, mode: 1.0}
            results = search_text(self.catalog, self.store, self.encoder, query, 5, moment_seconds=moment_seconds,
                                  experts=self.experts, weights=alone)
            if results and not results[0].experts:
                results = []  # the expert found nothing, and search fell back to appearance: it ranks nothing
        else:  # fused
            results = search_text(self.catalog, self.store, self.encoder, query, 5, moment_seconds=moment_seconds,
                                  experts=self.experts, weights=weights, calibration=calibration)
        return [self.names.get(r.video_id, "?") for r in results]

    catalog_moment_seconds: float = 5.0


def figures(searcher: Searcher, queries: Sequence[Query], mode: str, **kw) -> dict:
    per_kind = {kind: Figures() for kind in KINDS}
    mixed = Figures()
    for q in queries:
        ranked = searcher.rank(q.text, mode, **kw)
        per_kind[q.kind].add(ranked, q.relevant)
        mixed.add(ranked, q.relevant)
    return {**{k: f.as_dict() for k, f in per_kind.items() if f.hits1}, "mixed": mixed.as_dict()}


def tune(searcher: Searcher, tuning: Sequence[Query], progress: Callable[[int, int], None]) -> dict:
    """The grid on the tuning half: the point with the best mixed recall@1 (then @5) among those losing at most
    APPEARANCE_SLACK of the appearance queries against appearance alone; ties go to the current defaults."""
    alone = figures(searcher, tuning, "appearance")["appearance"]
    defaults = (fusion.DEFAULT_WEIGHTS["speech"], fusion.DEFAULT_WEIGHTS["text"], fusion.APPEARANCE_Z0)
    points = list(itertools.product(GRID_WEIGHTS, GRID_WEIGHTS, GRID_Z0))
    if defaults not in points:
        points.append(defaults)
    rows = []
    for i, (ws, wt, z0) in enumerate(points):
        f = figures(searcher, tuning, "fused", weights={fusion.APPEARANCE: 1.0, "speech": ws, "text": wt},
                    calibration=fusion.Calibration(z0=z0))
        allowed = f["appearance"]["recall_at_1"] >= alone["recall_at_1"] - APPEARANCE_SLACK - 1e-9
        distance = abs(np.log2(ws / defaults[0])) + abs(np.log2(wt / defaults[1])) + abs(z0 - defaults[2])
        rows.append({"speech": ws, "text": wt, "z0": z0, "allowed": allowed,
                     "mixed_r1": f["mixed"]["recall_at_1"], "mixed_r5": f["mixed"]["recall_at_5"],
                     "appearance_r1": f["appearance"]["recall_at_1"], "distance": distance})
        progress(i + 1, len(points))
    ok = [r for r in rows if r["allowed"]] or rows
    best = max(ok, key=lambda r: (r["mixed_r1"], r["mixed_r5"], -r["distance"]))
    at_defaults = next(r for r in rows if (r["speech"], r["text"], r["z0"]) == defaults)
    better = (best["mixed_r1"], best["mixed_r5"]) > (at_defaults["mixed_r1"], at_defaults["mixed_r5"])
    return {"grid": {"speech_weight": list(GRID_WEIGHTS), "text_weight": list(GRID_WEIGHTS), "z0": list(GRID_Z0)},
            "points": len(rows), "appearance_alone_r1": alone["recall_at_1"],
            "defaults": {k: at_defaults[k] for k in ("speech", "text", "z0", "mixed_r1", "mixed_r5",
                                                     "appearance_r1")},
            "chosen": {k: best[k] for k in ("speech", "text", "z0", "mixed_r1", "mixed_r5", "appearance_r1")},
            "chosen_beats_defaults": better,
            "ties_at_best": sum(1 for r in ok if (r["mixed_r1"], r["mixed_r5"]) == (best["mixed_r1"],
                                                                                     best["mixed_r5"]))}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency(searcher: Searcher, queries: Sequence[Query]) -> dict:
    """Milliseconds per search_text call with moments, as the app runs it: appearance only vs with the experts.

    The in-memory copy of the vectors (schema/memory_index.py) is loaded first and every query is asked once in
    both modes before timing, so neither mode pays the loading or a cold segment cache; then the two modes are
    timed alternately, query by query, so that load from other processes falls on both alike."""
    index = searcher.store.searcher() if hasattr(searcher.store, "searcher") else None
    if index is not None and hasattr(index, "wait_loaded") and index.current() is None:
        index.wait_loaded()
    modes = (("appearance_only", "appearance"), ("with_experts", "fused"))
    for q in queries:
        for _label, mode in modes:
            searcher.rank(q.text, mode, moments=True)  # warm-up
    times: dict[str, list[float]] = {label: [] for label, _ in modes}
    for q in queries:
        for label, mode in modes:
            t0 = time.perf_counter()
            searcher.rank(q.text, mode, moments=True)
            times[label].append((time.perf_counter() - t0) * 1000)
    return {label: {"p50_ms": round(statistics.median(t), 2), "p95_ms": round(_pct(t, 0.95), 2),
                    "queries": len(t)} for label, t in times.items()}


_RSS_CODE = """
import sys
from pathlib import Path
from ingest.decode import Limits
from ingest.expert_stage import run_expert
from ingest.experts import expert_class

def kb(field):
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(field))

for name in sys.argv[1].split(','):
    expert = expert_class(name)()
    for video in sys.argv[2:]:
        open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS: the peak of this video alone
        outcome = run_expert(expert, video, Limits())
        print('peak', name, kb('VmHWM'), len(outcome.segments), round(outcome.seconds, 2), flush=True)
"""


def write_memory_clip(path: Path, seconds: float, voice: Path) -> Path:
    """A cheap clip for the memory figure: a phrase said and a caption shown every 30 s (1 fps, 256 px)."""
    phrases, cards = [], []
    for j, start in enumerate(np.arange(1.0, seconds - 5, 30.0)):
        phrases.append((float(start), speak(sentence(j), voice)))
        cards.append((float(start), draw_text(render_frame("blue", "square", SIZE), shown_words(j).split(),
                                              font_size=20, centre=0.86)))
    plain = render_frame("blue", "square", SIZE)

    def frames(i: int) -> np.ndarray:
        shown = [card for start, card in cards if start <= i < start + 10]
        return shown[-1] if shown else plain

    return write_audio_video(path, speech_track(phrases, seconds), fps=1, frames=frames)


def peak_rss(experts: Sequence[str], videos: Sequence[Path]) -> dict:
    """Peak RSS (MB) of an expert process on each video, one after the other in one fresh process per the bench's
    memory phase: VmHWM reset to the current RSS before each video (/proc/self/clear_refs)."""
    out = subprocess.run([sys.executable, "-c", _RSS_CODE, ",".join(experts), *map(str, videos)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    result: dict = {}
    for line in out.stdout.splitlines():
        if line.startswith("peak "):
            _, name, kb, segments, seconds = line.split()
            result.setdefault(name, []).append({"rss_mb": round(int(kb) / 1024, 1), "segments": int(segments),
                                                "seconds": float(seconds)})
    return result


# ---------------------------------------------------------------------------------------------------- main


def check_plan(plan: Plan) -> None:
    low = os.environ.get(MINIMUMS_ENV) == "test"
    if not low and (plan.clips < MIN_CLIPS or plan.queries_per_kind < MIN_QUERIES):
        raise ValueError(f"the evaluation needs at least {MIN_CLIPS} clips and {MIN_QUERIES} queries of each kind")
    if plan.clips < 6 or plan.queries_per_kind < 4:
        raise ValueError("the evaluation needs at least 6 clips and 4 queries of each kind")


def run(settings: Settings, plan: Plan, *, out: Path | None = None,
        progress: Callable[[str], None] = lambda _msg: None,
        bar: Callable[[str, int], Callable[[int, int], None]] | None = None, model: Path | None = None) -> dict:
    """The whole evaluation; returns the report. `out` keeps the corpus, data folder and report there; `model`
    is a tiny CLIP already built by search_app/tiny_clip.py (the tests pass theirs), else one is trained here."""
    from ingest.runtime import Runtime
    from search_app.eval_corpus import have_festival
    from search_app.tiny_clip import build_checkpoint

    check_plan(plan)
    if not have_festival():
        raise RuntimeError("the evaluation speaks its sentences with festival's text2wave: apt-get install festival "
                           "festvox-kallpc16k")
    _check_vocabulary()
    phases: dict[str, float] = {}
    clock = [time.perf_counter(), ""]

    def phase(msg: str) -> None:
        now = time.perf_counter()
        if clock[1]:
            phases[clock[1]] = round(now - clock[0], 1)
        clock[:] = [now, msg]
        if msg:
            progress(msg)

    def noop(_done: int, _total: int) -> None:
        return None

    make_bar = bar or (lambda _desc, _total: noop)
    with tempfile.TemporaryDirectory(prefix="vidsearch-evaluate-") as tmp:
        work = Path(out) if out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        trained = model is None
        if trained:
            phase("training the tiny CLIP (colours x shapes)")
            model = build_checkpoint(work / "tiny-clip", seed=plan.seed)

        phase("writing the corpus")
        clips = plan_corpus(plan)
        (work / "corpus").mkdir(exist_ok=True)
        tick = make_bar("corpus", len(clips))
        for i, clip in enumerate(clips):
            write_clip(clip, work / "corpus", work / "voice", plan.seconds)
            tick(i + 1, len(clips))
        queries = make_queries(clips, plan.queries_per_kind, plan.seed)
        tuning, held = split(queries, plan.seed)

        s = settings.model_copy(update={"home": work / "data", "database_url": None, "milvus_uri": None,
                                        "collection": "evaluate", "model": str(model), "model_revision": None,
                                        "experts": "speech,text",
                                        "storage": None})  # a scratch library: its own folder
        rt = Runtime(s)
        try:
            phase("ingesting (appearance, then speech and text)")
            from ingest.library import enqueue_file
            from ingest.worker import Worker

            for clip in clips:
                clip.video_id = enqueue_file(rt.catalog, s, clip.path, link=True).video_id
            tick = make_bar("ingest", len(clips) * 3)
            done = [0]
            last_job = [0.0]
            with Worker.from_settings(rt.catalog, rt.store, rt.encoder, s) as worker:
                worker.decode_pool().wait_started(timeout=120)  # process start-up: not the videos' cost
                start = time.perf_counter()

                def on_result(_r) -> None:
                    last_job[0] = time.perf_counter()
                    done[0] += 1
                    tick(done[0], len(clips) * 3)

                def on_expert(_r) -> None:
                    done[0] += 1
                    tick(done[0], len(clips) * 3)

                results = worker.run_until_empty(on_result, on_expert)
                ingest_s = time.perf_counter() - start
            failed = [r.error for r in results if not r.ok]
            if failed:
                raise RuntimeError(f"ingest failed on the evaluation corpus: {failed[:3]}")
            appearance_s = last_job[0] - start
            ingest = ingest_cost(rt.catalog, clips, appearance_s, ingest_s)
            ingest["speech_recognizer"] = describe_asr(s)  # the speech figures depend on it (VIDSEARCH_ASR)

            names = {clip.video_id: clip.name for clip in clips}
            experts = rt.store.lexical_existing()
            live = Searcher(rt.catalog, rt.store, rt.encoder, experts, names, s.moment_seconds)
            memo = Searcher(_Memo(rt.catalog, ("videos_by_ids", "expert_runs")),
                            _Memo(rt.store, ("search", "fetch")), _Memo(rt.encoder, ("embed_text",)),
                            {e: _Memo(src, ("search",)) for e, src in experts.items()}, names, s.moment_seconds)

            phase("tuning on the tuning half")
            tuned = tune(memo, tuning, make_bar("tuning", 1))

            phase("held-out figures")
            modes = {"appearance": {}, **{e: {} for e in experts}, "fused": {}}
            recall = {mode: figures(memo, held, "fused" if mode == "fused" else mode, **kw)
                      for mode, kw in modes.items()}
            chosen = tuned["chosen"]
            if tuned["chosen_beats_defaults"]:
                recall["fused_tuned"] = figures(
                    memo, held, "fused", weights={fusion.APPEARANCE: 1.0, "speech": chosen["speech"],
                                                  "text": chosen["text"]},
                    calibration=fusion.Calibration(z0=chosen["z0"]))

            phase("query latency")
            lat = latency(live, held)
        finally:
            rt.close()
            from schema.lite_server import stop_server

            stop_server(s.milvus_lite_dir)

        phase("memory (10-minute video)")
        short = write_memory_clip(work / "memory_short.mp4", 30.0, work / "voice")
        long = write_memory_clip(work / "memory_long.mp4", plan.long_minutes * 60, work / "voice")
        rss = peak_rss(("speech", "text"), [short, long])
        memory = {name: {"rss_short_mb": runs[0]["rss_mb"], "rss_long_mb": runs[1]["rss_mb"],
                         "ratio": round(runs[1]["rss_mb"] / runs[0]["rss_mb"], 3),
                         "segments_long": runs[1]["segments"], "seconds_long": runs[1]["seconds"]}
                  for name, runs in rss.items()}
        memory["long_minutes"] = plan.long_minutes
        memory["audio_buffer_mb"] = round(plan.long_minutes * 60 * RATE * 4 / 2**20, 1)
        phase("")

        report = {
            "plan": dataclasses.asdict(plan),
            "model": "tiny CLIP trained here (search_app/tiny_clip.py)" if trained else str(model),
            "corpus": {"clips": len(clips), **{f"{k}_clips": sum(c.kind == k for c in clips) for k in KINDS},
                       "minutes": round(sum(c.duration for c in clips) / 60, 2),
                       "with_speech": sum(c.said is not None for c in clips),
                       "with_text": sum(c.shown is not None for c in clips)},
            "queries": {"per_kind": plan.queries_per_kind, "tuning": len(tuning), "held_out": len(held)},
            "device": f"cpu: {os.cpu_count()} cores",
            "recall": recall,
            "goals": goals(recall),
            "tuning": tuned,
            "defaults": {"weights": dict(fusion.DEFAULT_WEIGHTS), "z0": fusion.APPEARANCE_Z0,
                         "tau": fusion.APPEARANCE_TAU},
            "ingest": ingest,
            "latency": lat,
            "memory": memory,
            "phase_seconds": phases,
            "examples": [{"kind": q.kind, "variant": q.variant, "query": q.text}
                         for q in held[:: max(1, len(held) // 9)]],
        }
        if out:
            (work / "report.json").write_text(json.dumps(report, indent=2))
    return report


def ingest_cost(catalog, clips: Sequence[Clip], appearance_s: float, total_s: float) -> dict:
    """Seconds per video-minute: appearance from the worker's time until the last video was ready, each expert from
    its runs' own seconds in the catalog (expert_runs.seconds: decoding its input and running its engine)."""
    minutes = sum(c.duration for c in clips) / 60
    runs = catalog.expert_runs([c.video_id for c in clips])
    out = {"video_minutes": round(minutes, 3), "wall_s": round(total_s, 1),
           "appearance": {"seconds": round(appearance_s, 2), "s_per_video_minute": round(appearance_s / minutes, 2)}}
    for expert in ("speech", "text"):
        mine = [r[expert] for r in runs.values() if expert in r]
        seconds = sum(r.seconds or 0.0 for r in mine)
        states: dict[str, int] = {}
        for r in mine:
            states[r.state.value] = states.get(r.state.value, 0) + 1
        out[expert] = {"seconds": round(seconds, 2), "s_per_video_minute": round(seconds / minutes, 2),
                       "runs": states}
    return out


def goals(recall: dict) -> dict:
    fused = recall["fused"]
    singles = {m: r["mixed"]["recall_at_1"] for m, r in recall.items() if not m.startswith("fused")}
    best = max(singles, key=singles.get)
    app_alone = recall["appearance"]["appearance"]
    app_fused = fused["appearance"]
    lost = app_alone["hits_at_1"] - app_fused["hits_at_1"]
    return {
        "best_single_on_mixed": best,
        "fused_beats_best_single_on_mixed": fused["mixed"]["recall_at_1"] >= singles[best],
        "appearance_queries_lost_at_1": lost,
        "appearance_queries": app_alone["queries"],
        "appearance_within_one_in_fifty": lost <= APPEARANCE_SLACK * app_alone["queries"] + 1e-9,
    }


def format_table(report: dict) -> Iterator[str]:
    c, q = report["corpus"], report["queries"]
    yield (f"corpus    {c['clips']} clips ({c['appearance_clips']} appearance, {c['speech_clips']} speech, "
           f"{c['text_clips']} text; {c['with_speech']} with speech, {c['with_text']} with text on screen), "
           f"{c['minutes']:.1f} video-minutes")
    yield (f"queries   {q['per_kind']} per kind: {q['tuning']} tuning, {q['held_out']} held out; figures on the "
           "held-out half, recall@1 / recall@5")
    yield ""
    modes = [m for m in report["recall"]]
    labels = {"appearance": "appearance alone", "speech": "speech alone", "text": "text alone",
              "fused": "fused (defaults)", "fused_tuned": "fused (tuned)"}
    yield f"| {'ranked by':<18} | " + " | ".join(f"{k:<13}" for k in (*KINDS, "mixed")) + " |"
    yield "|" + "-" * 20 + "|" + "|".join("-" * 15 for _ in range(4)) + "|"
    for mode in modes:
        r = report["recall"][mode]
        cells = [f"{r[k]['recall_at_1']:.2f} / {r[k]['recall_at_5']:.2f}" if k in r else "-"
                 for k in (*KINDS, "mixed")]
        yield f"| {labels.get(mode, mode):<18} | " + " | ".join(f"{x:<13}" for x in cells) + " |"
    yield ""
    g = report["goals"]
    yield (f"goals     fused >= best single ({g['best_single_on_mixed']}) on mixed: "
           f"{'met' if g['fused_beats_best_single_on_mixed'] else 'NOT met'}; appearance-only queries lost at 1: "
           f"{g['appearance_queries_lost_at_1']} of {g['appearance_queries']} "
           f"({'met' if g['appearance_within_one_in_fifty'] else 'NOT met'})")
    t = report["tuning"]
    ch, de = t["chosen"], t["defaults"]
    yield (f"tuning    {t['points']} grid points; defaults (speech {de['speech']:g}, text {de['text']:g}, z0 "
           f"{de['z0']:g}): mixed r@1 {de['mixed_r1']:.3f}; chosen (speech {ch['speech']:g}, text {ch['text']:g}, "
           f"z0 {ch['z0']:g}): {ch['mixed_r1']:.3f}"
           f"{'' if t['chosen_beats_defaults'] else ' (no better than the defaults: kept)'}")
    ing = report["ingest"]
    yield ("ingest    s per video-minute: " + ", ".join(f"{e} {ing[e]['s_per_video_minute']:.1f}"
                                                       for e in ("appearance", "speech", "text"))
           + f" ({ing['video_minutes']:.1f} min, wall {ing['wall_s']:.0f} s; speech: "
              f"{ing.get('speech_recognizer', 'pocketsphinx')})")
    lat = report["latency"]
    yield (f"latency   appearance only p50 {lat['appearance_only']['p50_ms']:.1f} ms p95 "
           f"{lat['appearance_only']['p95_ms']:.1f} ms; with experts p50 {lat['with_experts']['p50_ms']:.1f} ms "
           f"p95 {lat['with_experts']['p95_ms']:.1f} ms")
    mem = report["memory"]
    for e in ("speech", "text"):
        if e in mem:
            m = mem[e]
            yield (f"memory    {e}: peak RSS {m['rss_short_mb']:.0f} MB (30 s) vs {m['rss_long_mb']:.0f} MB "
                   f"({mem['long_minutes']:g} min) -> x{m['ratio']:.2f}")
    yield f"          (a {mem['long_minutes']:g}-minute 16 kHz float32 audio buffer is {mem['audio_buffer_mb']} MB)"
