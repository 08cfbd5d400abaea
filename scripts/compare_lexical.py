"""Which BM25 set-up finds OCR text despite misreads and partial queries: the measurement behind schema/lexical.py.

Indexes OCR-like lines (with misreads) in a throwaway Milvus Lite server and prints, for each query, the rank of the
line it is meant to find (- = not found at all) under each set-up:

- words: the standard analyzer (Milvus Lite's `standard` always lowercases; a server's needs the lowercase filter,
  which Lite accepts and ignores, so "standard" and "standard + lowercase" are the same thing on Lite);
- grams N: only the character N-grams of the words (Lite has no ngram tokenizer or filter: they are made here);
- words + grams N: both BM25 scores added (what LexicalStore does with N=3).

    python scripts/compare_lexical.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schema.lexical import ANALYZER, words  # noqa: E402
from schema.lite_server import ensure_server, stop_server  # noqa: E402

CORPUS = ["RE16 TGK", "RE17 TGX", "HARVEST MOC", "HARVEST FESTIVAL TODAY", "MOON LANDING 1969", "PLATFORM NlNE",
          "PLATFORM TEN", "PLATF0RM NINE", "KINGS CROSS RE16TGK", "THE QUICK BROWN FOX", "NINE LIVES",
          "CITY CENTRE 5 MIN", "EXIT", "WELCOME TO THE HARVEST", "PLATFORM 9 3/4"]
CASES = [("RE16", "RE16 TGK"), ("re16 tgk", "RE16 TGK"), ("harvest moon", "HARVEST MOC"),
         ("platform nine", "PLATFORM NlNE"), ("platf", "PLATFORM NlNE"), ("platform", "PLATF0RM NINE"),
         ("tgk", "KINGS CROSS RE16TGK"), ("harvst", "HARVEST MOC"), ("quick brown fox", "THE QUICK BROWN FOX"),
         ("nine", "NINE LIVES")]


def ngrams(text: str, ns: tuple[int, ...]) -> list[str]:
    out: list[str] = []
    for word in words(text):
        for n in ns:
            if len(word) > n:
                out += [word[i : i + n] for i in range(len(word) - n + 1)]
            elif n == min(ns):
                out.append(word)
    return out


def build(client, name: str, ns: tuple[int, ...]) -> None:
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("video_id", DataType.INT64)
    for field in ("text", "grams"):
        schema.add_field(field, DataType.VARCHAR, max_length=8192, enable_analyzer=True, analyzer_params=ANALYZER)
        schema.add_field(f"{field}_sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name=f"{field}_bm25", function_type=FunctionType.BM25,
                                     input_field_names=[field], output_field_names=[f"{field}_sparse"]))
    index = client.prepare_index_params()
    for field in ("text_sparse", "grams_sparse"):
        index.add_index(field_name=field, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    client.insert(name, [{"video_id": i, "text": t, "grams": " ".join(ngrams(t, ns))} for i, t in enumerate(CORPUS)])
    client.flush(name)


def search(client, name: str, field: str, query: str) -> dict[int, float]:
    if not query.strip():
        return {}
    result = client.search(name, data=[query], anns_field=field, limit=len(CORPUS), output_fields=["video_id"],
                           search_params={"metric_type": "BM25"})
    return {int(h["entity"]["video_id"]): abs(float(h["distance"])) for h in result[0] if h["distance"]}


def rank(scores: dict[int, float], target: str) -> int | None:
    order = sorted(scores, key=lambda v: (-scores[v], v))
    wanted = CORPUS.index(target)
    return order.index(wanted) + 1 if wanted in order else None


def main() -> None:
    from pymilvus import MilvusClient

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "milvus"
        client = MilvusClient(uri=ensure_server(data), timeout=30)
        table: dict[str, list[int | None]] = {}
        try:
            for ns in ((2,), (3,), (2, 3)):
                name = "cmp_" + "".join(map(str, ns))
                build(client, name, ns)
                label = "+".join(map(str, ns))
                for query, target in CASES:
                    w = search(client, name, "text_sparse", query)
                    g = search(client, name, "grams_sparse", " ".join(ngrams(query, ns)))
                    table.setdefault("words (standard [+ lowercase])", []).append(rank(w, target)) if ns == (2,) \
                        else None
                    table.setdefault(f"grams {label}", []).append(rank(g, target))
                    both = {v: w.get(v, 0.0) + g.get(v, 0.0) for v in set(w) | set(g)}
                    table.setdefault(f"words + grams {label}", []).append(rank(both, target))
        finally:
            client.close()
            stop_server(data)
    print("| set-up | " + " | ".join(f"{q!r} -> {t!r}" for q, t in CASES) + " | found | first |")
    print("|---" * (len(CASES) + 3) + "|")
    for label, ranks in table.items():
        cells = " | ".join("-" if r is None else str(r) for r in ranks)
        print(f"| {label} | {cells} | {sum(r is not None for r in ranks)}/{len(ranks)} | "
              f"{sum(r == 1 for r in ranks)} |")


if __name__ == "__main__":
    main()
