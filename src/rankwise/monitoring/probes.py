"""Behaviour probes: small rule-based edits of gold-set pairs whose effect on a reranker's score is known.

Why: nDCG on a gold set says how well a reranker ranks, not how it decides. Two models with the same nDCG
can differ in whether they read a document or merely count the query's words in it, and cross-encoders
have two well-known failure modes: they overfit lexical cues (a document stuffed with the query's words
wins) and they miss negation ("refunds are not possible" answers "can I get a refund" as well as the
affirmative). Following CheckList (Ribeiro et al., 2020, "Beyond Accuracy: Behavioral Testing of NLP
Models with CheckList"), each probe applies one perturbation to judged-relevant (query, document) pairs
and checks how the score moves:

* ``negation`` (directional): a negation inserted into the first sentence that has an auxiliary or
  modal verb to negate ("is" → "is not", "can" → "cannot") — the score must go down;
* ``number_swap`` (directional): numbers the query asks about are changed in the document (30 → 47,
  2024 → 2019, 3.2 → 4.2) — down;
* ``entity_swap`` (directional): a name, acronym or code shared by query and document (Postgres, MFA,
  Q4) is replaced by one of the same shape taken from another document of the gold set — down;
* ``lexical_overlap`` (directional): the query's content words appended as a keyword line to an
  irrelevant document (judged irrelevant, else a random other one) — it must still score below the
  relevant document;
* ``paraphrase_kept`` (invariance): up to three words replaced by synonyms from a small table (query
  words are left alone), else the first two sentences swapped — the calibrated score must move by less
  than a tolerance.

A directional probe passes only on a strict drop of the raw logit. CheckList's directional tests accept
an unchanged prediction by default, but a reranker that ignores "not" leaves its score unchanged, and
that is exactly the failure looked for. The rules are regular expressions and a synonym table, no model:
a person can check every edit (reports carry examples), and where a rule does not apply the pair is
counted as skipped rather than forced into an edit. Edits are not always idiomatic ("has not 16 weeks"):
what matters is that the document now denies or changes what the query asked about.

Text probed: the document's first indexed passage, title and body, exactly as the pipeline hands a
candidate to the reranker — the whole document for the 50–150 word articles of a typical knowledge base,
the opening of a longer one.

>>> pairs = sample_pairs(prepared_goldset, index, limit=100, seed=0)
>>> report = run_probes(reranker, pairs, source="kb/test, seed 0")
>>> compare(report, production_report)
['negation pass rate 0.82 → 0.61']
"""

from __future__ import annotations

import random
import re
import statistics
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, get_args

from rankwise.errors import ModelError, RankwiseError
from rankwise.evaluation.errors import EvaluationError
from rankwise.options import choose

if TYPE_CHECKING:
    from rankwise.evaluation.goldset import PreparedGoldSet
    from rankwise.index import Index
    from rankwise.rerank.base import Reranker

ProbeName = Literal["negation", "number_swap", "entity_swap", "lexical_overlap", "paraphrase_kept"]
ALL_PROBES: tuple[ProbeName, ...] = get_args(ProbeName)
#: ``lower``: the perturbed text must score strictly below the original; ``stable``: within the tolerance
Expectation = Literal["lower", "stable"]
#: how far (calibrated, 0..1) a meaning-preserving edit may move the score
STABLE_TOLERANCE = 0.1
#: a pass rate this much below production's is reported as a regression
REGRESSION_TOLERANCE = 0.05
_EXAMPLES = 3
_SNIPPET = 160


# ---------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True, slots=True)
class ProbeText:
    """A document as probed: its first indexed passage, title and body kept apart so edits touch the body."""

    doc_id: str
    title: str
    body: str

    @property
    def text(self) -> str:
        """What the reranker scores (the same join as :attr:`rankwise.types.Passage.full_text`)."""
        return f"{self.title}\n{self.body}" if self.title else self.body


@dataclass(frozen=True, slots=True)
class ProbePair:
    """A judged-relevant (query, document) pair, with what some probes need besides it.

    ``irrelevant``: a document that does not answer the query (``lexical_overlap`` stuffs it with the
    query's words); ``others``: other documents of the gold set (``entity_swap`` takes replacements there).
    """

    query_id: str
    query: str
    relevant: ProbeText
    irrelevant: ProbeText | None = None
    others: tuple[ProbeText, ...] = ()


@dataclass(frozen=True, slots=True)
class Perturbation:
    """One test case: ``perturbed`` is scored against ``original`` for ``query``; ``edit`` says what changed
    (in words, for the examples of a report)."""

    probe: ProbeName
    query: str
    original: str
    perturbed: str
    expect: Expectation
    edit: str


def sample_pairs(gold: PreparedGoldSet, index: Index, *, limit: int = 100, seed: int = 0) -> list[ProbePair]:
    """At most ``limit`` judged-relevant (label ≥ 1) pairs of ``gold`` whose document is in ``index``.

    The sample is a seeded draw from the sorted pairs, so the same seed probes the same pairs and two
    models' pass rates are comparable. Each pair gets an irrelevant document: one judged irrelevant for
    its query when there is one (a person said no to it, usually a near miss), else a random indexed
    document not judged for the query.
    """
    if limit < 1:
        raise EvaluationError(f"the number of probe pairs must be positive (got {limit})")
    first_row: dict[str, int] = {}
    for row, doc_id in enumerate(index.passage_doc_ids):
        first_row.setdefault(doc_id, row)
    relevant = sorted((qid, doc) for qid, docs in gold.qrels.items() for doc, label in docs.items()
                      if label >= 1 and doc in first_row)
    if not relevant:
        raise EvaluationError(f"the gold set '{gold.name}' has no judged-relevant document in the index; "
                              "is this the index of the gold set's corpus?")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(relevant, min(limit, len(relevant))))
    corpus = list(first_row)
    negatives: dict[tuple[str, str], str | None] = {}
    for qid, doc in chosen:
        judged = gold.qrels[qid]
        rejected = sorted(d for d, label in judged.items() if label <= 0 and d in first_row)
        negatives[(qid, doc)] = rng.choice(rejected) if rejected else _random_other(corpus, judged, rng)
    needed = sorted({doc for _, doc in chosen} | {d for d in negatives.values() if d is not None})
    passages = index.docstore.passages([first_row[d] for d in needed])
    texts = {p.doc_id: ProbeText(p.doc_id, p.title, p.text) for p in passages}
    others = tuple(texts[d] for d in needed)
    pairs = []
    for qid, doc in chosen:
        negative = negatives[(qid, doc)]
        irrelevant = None if negative is None else texts[negative]
        pairs.append(ProbePair(qid, gold.queries[qid], texts[doc], irrelevant, others))
    return pairs


def _random_other(corpus: Sequence[str], judged: Mapping[str, int], rng: random.Random) -> str | None:
    for _attempt in range(20):
        doc_id = corpus[rng.randrange(len(corpus))]
        if doc_id not in judged:
            return doc_id
    return None


# ---------------------------------------------------------------------------------------------- rules
_WORD = re.compile(r"[A-Za-z0-9][\w\-]*")
_STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "for", "with", "at", "by", "from", "as",
    "into", "about", "than", "then", "so", "if", "is", "are", "was", "were", "be", "been", "being", "am",
    "do", "does", "did", "done", "have", "has", "had", "can", "could", "should", "would", "will", "shall",
    "may", "might", "must", "not", "no", "yes", "i", "me", "my", "we", "our", "us", "you", "your", "he",
    "she", "they", "them", "their", "it", "its", "this", "that", "these", "those", "there", "here", "what",
    "when", "where", "who", "whom", "which", "why", "how", "get", "got", "any", "some", "all", "each",
    "per", "via", "vs"
})


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _WORD.findall(text)]


def _content_words(query: str) -> list[str]:
    """The query's words that carry its topic, in order, without repeats (what a keyword match counts)."""
    return list(dict.fromkeys(t for t in _tokens(query) if t not in _STOPWORDS))


def _replace_body(pair: ProbePair, body: str) -> str:
    return ProbeText(pair.relevant.doc_id, pair.relevant.title, body).text


_NEGATIONS = {"is": "is not", "are": "are not", "was": "was not", "were": "were not", "can": "cannot",
              "could": "could not", "will": "will not", "would": "would not", "should": "should not",
              "must": "must not", "may": "may not", "does": "does not", "do": "do not", "did": "did not",
              "has": "has not", "have": "have not", "had": "had not"}
#: a lower-case auxiliary or modal not already negated, contracted ("can't") or followed by "to" ("has to")
_NEGATABLE = re.compile(r"\b(" + "|".join(_NEGATIONS) + r")\b(?!['’])(?!\s+(?:not|never|no|to)\b)")


def negation(pair: ProbePair) -> Perturbation | None:
    """Negate the first auxiliary or modal verb of the body (so: of its first sentence that has one).

    Only lower-case forms match, which keeps "May" (the month) and sentence-initial questions out.
    """
    body = pair.relevant.body
    match = _NEGATABLE.search(body)
    if match is None:
        return None
    verb = match.group(1)
    negated = body[:match.start()] + _NEGATIONS[verb] + body[match.end():]
    return Perturbation("negation", pair.query, pair.relevant.text, _replace_body(pair, negated), "lower",
                        f"{verb} → {_NEGATIONS[verb]}")


_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)*(?!\w|\.\d)")


def _other_number(number: str) -> str:
    """A plausible different value: a version's major part + 1, a year − 5, any other integer + 17."""
    head, dot, rest = number.partition(".")
    if dot:
        return f"{int(head) + 1}.{rest}"
    value = int(number)
    return str(value - 5 if len(number) == 4 and 1900 <= value <= 2099 else value + 17)


def number_swap(pair: ProbePair) -> Perturbation | None:
    """Change, in title and body, every number of the document that the query also contains."""
    asked = set(_NUMBER.findall(pair.query))
    doc = pair.relevant
    present = set(_NUMBER.findall(doc.text))
    shared = sorted(asked & present)
    if not shared:
        return None
    taken = asked | present
    swaps: dict[str, str] = {}
    for number in shared:
        other = _other_number(number)
        while other in taken:
            other = _other_number(other)
        swaps[number] = other
        taken.add(other)

    def swap(text: str) -> str:
        return _NUMBER.sub(lambda m: swaps.get(m.group(0), m.group(0)), text)

    perturbed = ProbeText(doc.doc_id, swap(doc.title), swap(doc.body)).text
    return Perturbation("number_swap", pair.query, doc.text, perturbed, "lower",
                        ", ".join(f"{a} → {b}" for a, b in swaps.items()))


def _shape(token: str) -> str | None:
    """An entity's shape — its characters as classes, letter runs collapsed, digits kept one by one
    (Postgres ``Aa``, MFA ``A``, Q4 ``A9``, E1234 ``A9999``, HTTP-503 ``A-999``) — or ``None`` for a word
    that is no name, acronym or code.

    A replacement must have the same shape, so a quarter becomes another quarter (Q3 → Q4) rather than a
    password hash (Argon2id) or an error code (E2001), and an acronym another acronym.
    """
    classes = "".join("A" if c.isupper() else "a" if c.islower() else "9" if c.isdigit() else c
                      for c in token)
    shape = re.sub(r"([Aa])\1+", r"\1", classes)
    is_code = "9" in shape and ("A" in shape or "a" in shape)
    is_acronym = shape == "A" and len(token) >= 2
    return shape if is_code or is_acronym or shape == "Aa" else None


@lru_cache(maxsize=4096)
def _entities(body: str) -> tuple[tuple[str, str], ...]:
    """(entity, shape) of a body's names, acronyms and codes, in order; a capitalised word opening a sentence
    is no name."""
    found: list[tuple[str, str]] = []
    for match in _WORD.finditer(body):
        token = match.group(0).rstrip("-")
        shape = _shape(token)
        before = body[:match.start()].rstrip(" \t")
        opens_sentence = not before.strip() or before[-1] in ".!?:;\n"
        if shape is not None and not (shape == "Aa" and opens_sentence):
            found.append((token, shape))
    return tuple(found)


def entity_swap(pair: ProbePair) -> Perturbation | None:
    """Replace the first entity of the body that the query names and another document has a same-shape
    entity for (the choice among those is a hash of query and entity: stable across runs and models)."""
    asked = set(_tokens(pair.query))
    doc = pair.relevant
    own = set(_tokens(doc.text))
    candidates: dict[str, set[str]] = {}
    for other in pair.others:
        if other.doc_id != doc.doc_id:
            for entity, shape in _entities(other.body):
                if entity.lower() not in own and entity.lower() not in asked:
                    candidates.setdefault(shape, set()).add(entity)
    shared = next(((e, sorted(candidates[s])) for e, s in _entities(doc.body)
                   if e.lower() in asked and s in candidates), None)
    if shared is None:
        return None
    entity, donors = shared
    replacement = donors[zlib.crc32(f"{pair.query}\x1f{entity}".encode()) % len(donors)]
    word = re.compile(rf"(?<![\w-]){re.escape(entity)}(?![\w-])")
    perturbed = ProbeText(doc.doc_id, word.sub(replacement, doc.title), word.sub(replacement, doc.body)).text
    return Perturbation("entity_swap", pair.query, doc.text, perturbed, "lower", f"{entity} → {replacement}")


def lexical_overlap(pair: ProbePair) -> Perturbation | None:
    """An irrelevant document with the query's content words appended as a keyword line, scored against the
    relevant one."""
    words = _content_words(pair.query)
    if pair.irrelevant is None or not words:
        return None
    stuffed = pair.irrelevant.body.rstrip() + "\nKeywords: " + " ".join(words)
    return Perturbation("lexical_overlap", pair.query, pair.relevant.text,
                        ProbeText(pair.irrelevant.doc_id, pair.irrelevant.title, stuffed).text, "lower",
                        f"'Keywords: {' '.join(words)}' appended to irrelevant {pair.irrelevant.doc_id}")


#: verbs, adverbs and adjectives only: a word that is also a common noun ("request", "change") would break
#: the sentence it is swapped into
_SYNONYMS = {
    "begin": "start", "begins": "starts", "assist": "help", "require": "need", "requires": "needs",
    "choose": "select", "chooses": "selects", "allows": "permits", "quickly": "rapidly", "rapidly": "quickly",
    "large": "big", "big": "large", "receive": "get", "receives": "gets", "obtain": "get",
    "shows": "displays",
    "verify": "confirm", "confirm": "verify", "verifies": "confirms", "confirms": "verifies",
    "usually": "typically", "typically": "usually", "often": "frequently", "frequently": "often",
    "employees": "staff", "staff": "employees", "immediately": "promptly", "ensure": "make sure",
    "modify": "change", "approximately": "about", "roughly": "about",
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MAX_SYNONYMS = 3


def paraphrase_kept(pair: ProbePair) -> Perturbation | None:
    """Up to three synonyms (never for a query word), else the first two sentences of the body swapped."""
    asked = set(_tokens(pair.query))
    body = pair.relevant.body
    edits: list[str] = []

    def synonym(match: re.Match[str]) -> str:
        word = match.group(0)
        if len(edits) >= _MAX_SYNONYMS or word.lower() in asked or word.lower() not in _SYNONYMS:
            return word
        new = _SYNONYMS[word.lower()]
        new = new[0].upper() + new[1:] if word[0].isupper() else new
        edits.append(f"{word} → {new}")
        return new

    paraphrased = re.sub(r"[A-Za-z]+", synonym, body)
    if not edits:
        sentences = _SENTENCE_END.split(body.strip())
        if len(sentences) < 2 or sentences[0] == sentences[1]:
            return None
        paraphrased = " ".join([sentences[1], sentences[0], *sentences[2:]])
        edits.append("first two sentences swapped")
    return Perturbation("paraphrase_kept", pair.query, pair.relevant.text, _replace_body(pair, paraphrased),
                        "stable", ", ".join(edits))


RULES: dict[ProbeName, Callable[[ProbePair], Perturbation | None]] = {
    "negation": negation, "number_swap": number_swap, "entity_swap": entity_swap,
    "lexical_overlap": lexical_overlap, "paraphrase_kept": paraphrase_kept,
}


# ---------------------------------------------------------------------------------------------- report
@dataclass(frozen=True, slots=True)
class ProbeFailure:
    """A pair on which the score moved the wrong way: snippets around the edit and both scores."""

    query: str
    original: str
    perturbed: str
    original_raw: float
    perturbed_raw: float
    original_score: float
    perturbed_score: float
    edit: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe over the sample; deltas are perturbed − original, means over the applicable pairs."""

    probe: ProbeName
    expect: Expectation
    pairs: int
    applicable: int
    passed: int
    mean_delta_raw: float | None
    mean_delta_calibrated: float | None
    failures: tuple[ProbeFailure, ...] = ()

    @property
    def skipped(self) -> int:
        """Pairs the rule did not apply to (no verb to negate, no shared number, …)."""
        return self.pairs - self.applicable

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.applicable if self.applicable else None


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """Every probe's result for one model on one sample of pairs (``source`` names the sample)."""

    model: str
    pairs: int
    results: tuple[ProbeResult, ...]
    source: str = ""
    stable_tolerance: float = STABLE_TOLERANCE
    #: (lowest, highest) calibrated score over every text the probes scored; None in older records
    score_range: tuple[float, float] | None = None

    @property
    def constant_scores(self) -> bool:
        """The model gives every text about the same score: probes then pass or fail by noise, and the model
        cannot rank (a broken export, an untrained head)."""
        return self.score_range is not None and self.score_range[1] - self.score_range[0] < CONSTANT_SPREAD

    def result(self, probe: ProbeName) -> ProbeResult | None:
        return next((r for r in self.results if r.probe == probe), None)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "pairs": self.pairs, "source": self.source,
                "stable_tolerance": self.stable_tolerance,
                "score_range": list(self.score_range) if self.score_range is not None else None,
                "probes": {r.probe: {"expect": r.expect, "pairs": r.pairs, "applicable": r.applicable,
                                     "skipped": r.skipped, "passed": r.passed, "pass_rate": r.pass_rate,
                                     "mean_delta_raw": r.mean_delta_raw,
                                     "mean_delta_calibrated": r.mean_delta_calibrated,
                                     "failures": [_failure_dict(f) for f in r.failures]}
                           for r in self.results}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeReport:
        """The report :meth:`to_dict` wrote; a malformed one (a hand-edited history) is one
        :class:`ModelError`."""
        try:
            results = tuple(
                ProbeResult(choose(name, ALL_PROBES, "probe"),
                            choose(r["expect"], get_args(Expectation), "expectation"), int(r["pairs"]),
                            int(r["applicable"]), int(r["passed"]), _optional(r["mean_delta_raw"]),
                            _optional(r["mean_delta_calibrated"]),
                            tuple(_failure_from(f) for f in r["failures"]))
                for name, r in sorted(data["probes"].items(), key=lambda item: _order(item[0])))
            found = data.get("score_range")
            score_range = (float(found[0]), float(found[1])) if found is not None else None
            return cls(str(data["model"]), int(data["pairs"]), results, str(data["source"]),
                       float(data["stable_tolerance"]), score_range)
        except (KeyError, TypeError, ValueError, AttributeError, RankwiseError) as err:
            raise ModelError(f"behaviour probe results are malformed ({type(err).__name__}: {err}); record "
                             "them again with `rankwise models probe`") from None

    def summary_lines(self, examples: bool = True) -> list[str]:
        """A table (one line per probe) and, with ``examples``, the recorded failures under it."""
        source = f" ({self.source})" if self.source else ""
        columns = [f"{'probe':<16}", f"{'expect':<7}", f"{'applicable':>10}", f"{'pass rate':>9}",
                   f"{'Δ raw':>8}", f"{'Δ calibrated':>12}"]
        lines = [f"behaviour probes of {self.model} on {self.pairs} pairs{source}", "  " + " ".join(columns)]
        for r in self.results:
            lines.append(f"  {r.probe:<16} {r.expect:<7} {f'{r.applicable}/{r.pairs}':>10} "
                         f"{_fmt(r.pass_rate, 2):>9} {_fmt(r.mean_delta_raw, 3, sign=True):>8} "
                         f"{_fmt(r.mean_delta_calibrated, 3, sign=True):>12}")
        lines.append(f"  lower: perturbed must score below the original; stable: |Δ calibrated| < "
                     f"{self.stable_tolerance:g}")
        if self.constant_scores and self.score_range is not None:
            low, high = self.score_range
            lines.append(f"  warning: every text scored between {low:.3f} and {high:.3f}: the model does not "
                         "tell documents apart, so these pass rates are noise; check its export and training")
        for r in self.results if examples else ():
            for f in r.failures:
                lines += [(f"  {r.probe} failure: \"{f.query}\" {f.original_score:.3f} → "
                           f"{f.perturbed_score:.3f} (raw {f.original_raw:+.3f} → {f.perturbed_raw:+.3f}; "
                           f"{f.edit})"),
                          f"      original:  {f.original}", f"      perturbed: {f.perturbed}"]
        return lines


#: calibrated scores spread less than this over every probed text: the model does not rank
CONSTANT_SPREAD = 0.01


def _order(probe: str) -> int:
    """Where a probe goes in a report: the order of :data:`ALL_PROBES` (unknown names last)."""
    return {name: i for i, name in enumerate(ALL_PROBES)}.get(probe, len(ALL_PROBES))


def _failure_dict(failure: ProbeFailure) -> dict[str, Any]:
    return {"query": failure.query, "original": failure.original, "perturbed": failure.perturbed,
            "original_raw": failure.original_raw, "perturbed_raw": failure.perturbed_raw,
            "original_score": failure.original_score, "perturbed_score": failure.perturbed_score,
            "edit": failure.edit}


def _failure_from(data: Mapping[str, Any]) -> ProbeFailure:
    return ProbeFailure(str(data["query"]), str(data["original"]), str(data["perturbed"]),
                        float(data["original_raw"]), float(data["perturbed_raw"]),
                        float(data["original_score"]), float(data["perturbed_score"]), str(data["edit"]))


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _fmt(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------- running
def run_probes(reranker: Reranker, pairs: Sequence[ProbePair], probes: Sequence[ProbeName] = ALL_PROBES,
               *, stable_tolerance: float = STABLE_TOLERANCE, source: str = "") -> ProbeReport:
    """Apply each probe's rule to every pair and score originals and perturbations, one batch per query."""
    names = sorted({choose(p, ALL_PROBES, "probe") for p in probes}, key=_order)  # one order in every report
    cases = {name: [c for c in map(RULES[name], pairs) if c is not None] for name in names}
    batches: dict[str, dict[str, None]] = {}
    for items in cases.values():
        for case in items:
            batches.setdefault(case.query, {}).update(dict.fromkeys((case.original, case.perturbed)))
    scores: dict[tuple[str, str], tuple[float, float]] = {}
    for query, texts in batches.items():
        result = reranker.score(query, list(texts))
        for i, text in enumerate(texts):
            scores[(query, text)] = (float(result.raw[i]), float(result.calibrated[i]))
    results = tuple(_result(name, cases[name], scores, len(pairs), stable_tolerance) for name in names)
    calibrated = [c for _, c in scores.values()]
    score_range = (min(calibrated), max(calibrated)) if calibrated else None
    return ProbeReport(reranker.name, len(pairs), results, source, stable_tolerance, score_range)


Scores = Mapping[tuple[str, str], tuple[float, float]]


def _result(name: ProbeName, cases: Sequence[Perturbation], scores: Scores, pairs: int,
            tolerance: float) -> ProbeResult:
    expect: Expectation = "stable" if name == "paraphrase_kept" else "lower"
    measured = [(case, scores[(case.query, case.original)], scores[(case.query, case.perturbed)])
                for case in cases]
    deltas = [(after[0] - before[0], after[1] - before[1]) for _, before, after in measured]
    ok = [abs(d_cal) < tolerance if expect == "stable" else d_raw < 0 for d_raw, d_cal in deltas]
    # the worst failures teach the most: the largest move in the wrong direction first
    wrong = sorted((i for i, good in enumerate(ok) if not good),
                   key=lambda i: -(abs(deltas[i][1]) if expect == "stable" else deltas[i][0]))
    failures = tuple(_failure(*measured[i]) for i in wrong[:_EXAMPLES])
    return ProbeResult(name, expect, pairs, len(cases), sum(ok),
                       statistics.fmean(d for d, _ in deltas) if deltas else None,
                       statistics.fmean(d for _, d in deltas) if deltas else None, failures)


def _failure(case: Perturbation, before: tuple[float, float], after: tuple[float, float]) -> ProbeFailure:
    if case.probe == "lexical_overlap":  # another document: where it starts, and the keyword line at its end
        tail = max(0, len(case.perturbed) - _SNIPPET)
        original, perturbed = _cut(case.original, 0), _cut(case.perturbed, tail)
    else:  # an edit of the same text: both around the first change
        shortest = min(len(case.original), len(case.perturbed))
        same = next((i for i in range(shortest) if case.original[i] != case.perturbed[i]), shortest)
        start = max(0, same - 40)
        original, perturbed = _cut(case.original, start), _cut(case.perturbed, start)
    return ProbeFailure(case.query, original, perturbed, before[0], after[0], before[1], after[1], case.edit)


def _cut(text: str, start: int) -> str:
    piece = " ".join(text[start:start + _SNIPPET].split())
    return ("…" if start > 0 else "") + piece + ("…" if start + _SNIPPET < len(text) else "")


# ---------------------------------------------------------------------------------------------- comparing
def compare(candidate: ProbeReport, production: ProbeReport,
            tolerance: float = REGRESSION_TOLERANCE) -> list[str]:
    """Regressions in words ("negation pass rate 0.82 → 0.61"): probes whose pass rate fell by more than
    ``tolerance``; probes either report could not apply are not compared."""
    regressions = []
    for new in candidate.results:
        old = production.result(new.probe)
        if old is not None and new.pass_rate is not None and old.pass_rate is not None \
                and new.pass_rate < old.pass_rate - tolerance:
            regressions.append(f"{new.probe} pass rate {old.pass_rate:.2f} → {new.pass_rate:.2f}")
    return regressions


def mismatch(candidate: ProbeReport, production: ProbeReport) -> str | None:
    """Why two reports' pass rates are not strictly comparable (different samples), or ``None``."""
    if (candidate.source, candidate.pairs) == (production.source, production.pairs):
        return None
    return (f"the probes ran on different pairs ({candidate.pairs} from {candidate.source or 'unknown'} "
            f"vs {production.pairs} from {production.source or 'unknown'}); re-run both on the same gold set "
            "and seed for an exact comparison")
