"""Request and response bodies (pydantic), which also generate the OpenAPI document at ``/openapi.json``.

``/v1/rerank`` speaks Cohere's rerank API (v1 and v2 request fields) and infinity's ``raw_scores``
extension, so existing clients work by changing the base URL. Unknown top-level fields are refused
(422) rather than ignored: a misspelt ``top_n`` silently ignored would be a silently wrong answer.
"""

from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictStr,
    StringConstraints,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rankwise.feedback.events import FeedbackSignal
from rankwise.serving.config import Limits
from rankwise.types import Provenance, SearchResult

MAX_TIMEOUT_MS = 600_000
MAX_K = 1000
#: "contains a character Python's ``str.strip`` keeps" — the whitespace set spelled out, because ``\s`` means
#: different things to Python, pydantic's Rust regex and the JSON Schema (ECMA) validators clients use.
NON_BLANK = r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
#: metadata keys the docstore accepts: letters, digits, ``_ - .``, at least one letter or digit
FILTER_KEY = r"^[A-Za-z0-9_.-]*[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: what a failed ``pattern`` means, in words (pydantic would print the regular expression)
PATTERN_MESSAGES = {NON_BLANK: "must contain a non-whitespace character",
                    FILTER_KEY: "metadata filter keys use letters, digits, '_', '-' and '.' only"}


# Unions are routed by JSON type (pydantic "callable discriminators"), so a bad item gets one error
# message instead of one per union member.
def _document_kind(value: Any) -> str:
    return "object" if isinstance(value, dict) else "string"


def _scalar_kind(value: Any) -> str:
    return "string" if isinstance(value, str) else "number"


def _filter_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "value"


def _not_bool(value: Any) -> Any:
    """JSON ``true`` is not the integer 1 (pydantic's lax mode would take it; strict mode would refuse 3.0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


# constraints first, then the bool check: that order keeps minimum/maximum in the JSON schema
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_not_bool)]
TimeoutMs = Annotated[int, Field(ge=1, le=MAX_TIMEOUT_MS), BeforeValidator(_not_bool)]
ResultCount = Annotated[int, Field(ge=1, le=MAX_K), BeforeValidator(_not_bool)]
RerankCount = Annotated[int, Field(ge=0, le=MAX_K), BeforeValidator(_not_bool)]
Scalar = Annotated[Annotated[StrictStr, Tag("string")] | Annotated[StrictFloat, Tag("number")],
                   Discriminator(_scalar_kind)]
FilterValue = Annotated[Annotated[Scalar, Tag("value")] | Annotated[list[Scalar], Tag("list")],
                        Discriminator(_filter_kind)]


class _Strict(BaseModel):
    """A request body: unknown fields refused, and every string must be text that can be stored and echoed.

    JSON allows a lone surrogate (``"\\ud800"``) that no UTF-8 file, database or response can hold; refused
    here with the field's path, instead of failing later where it is written (a 500).
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        _refuse_surrogates(data, ())
        return data


def _refuse_surrogates(value: Any, path: tuple[str | int, ...]) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            where = ".".join(str(p) for p in path) or "body"
            raise PydanticCustomError("unicode_text", f"{where}: not valid Unicode text (a lone surrogate such as "
                                      "\\ud800); send UTF-8 text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_surrogates(key, path)
            _refuse_surrogates(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_surrogates(item, (*path, i))


UserId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
GroupName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NON_BLANK)]


class FeedbackRequest(_Strict):
    """One user reaction to one returned result (by `doc_id` or `rank`: at least one); send it again with
    the same ``event_id`` safely."""

    # stated in the schema, so clients and schema-driven tools know the rule pydantic enforces below
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [{"required": ["doc_id"]},
                                                                           {"required": ["rank"]}]})

    request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        ..., description="The `request_id` of the search or rerank response the user reacted to.")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NON_BLANK)] = Field(
        ..., description="Unique per event, chosen by the client: a retry with the same id is stored once.")
    signal: FeedbackSignal
    doc_id: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        None, description="The result's doc_id (for /v1/rerank: its `index`). Or give `rank`.")
    rank: PositiveInt | None = Field(None, description="The result's 1-based position in the response.")
    value: Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_bool)] | None = Field(
        None, description="dwell: seconds; custom: any number.")
    user_id: UserId | None = None

    @model_validator(mode="after")
    def _names_a_result(self) -> "FeedbackRequest":
        if self.doc_id is None and self.rank is None:
            raise PydanticCustomError("result_missing", "give the result's doc_id or its rank")
        return self


class FeedbackReceipt(BaseModel):
    status: Literal["stored", "duplicate"]
    event_id: str
    request_id: str
    doc_id: str
    rank: int


class Cost(BaseModel):
    """Model work behind one response (cache hits cost nothing), for routing and capacity planning."""

    pairs: int = Field(..., description="(query, document) pairs the model scored.")
    tokens: int = Field(..., description="Tokens the model ran over (0 for rerankers without a tokenizer).")
    cpu_ms: float = Field(..., description="CPU milliseconds: this request's share of its batching rounds.")


class ExperimentInfo(BaseModel):
    """Which experiment arm (or canary) answered; for interleaving, the arm behind each result."""

    name: str | None = None
    arm: str | None = None
    teams: list[str] | None = None


#: metadata keys listed in the search schema; beyond this the schema gives the key pattern only
MAX_LISTED_KEYS = 200


def request_models(limits: Limits, filter_keys: Collection[str] | None = None,
                   ) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """The ``/v1/rerank``, ``/v2/rerank`` and ``/v1/search`` request bodies with this server's limits in their schema.

    Built per server because the limits are settings: putting them in the schema (maxLength, maxItems)
    tells clients and schema-driven tools the real contract, and pydantic refuses violations with 422
    and a message naming the field and the limit. ``filter_keys``, the index's metadata keys when the server
    refuses others, become the schema's ``propertyNames`` of ``filters`` (the search itself refuses an
    unknown key with a message listing the known ones); an index with more than :data:`MAX_LISTED_KEYS`
    keys is described by the key pattern only.
    """
    names: dict[str, Any] = ({"propertyNames": {"enum": sorted(filter_keys)}}
                             if filter_keys is not None and len(filter_keys) <= MAX_LISTED_KEYS else {})
    Query = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars, pattern=NON_BLANK)]
    Text = Annotated[str, StringConstraints(max_length=limits.max_document_chars)]

    class RerankDocument(BaseModel):
        """A document object as Cohere accepts it; fields other than ``text`` are allowed and ignored."""

        model_config = ConfigDict(extra="ignore")
        text: Text

    Document = Annotated[Annotated[Text, Tag("string")] | Annotated[RerankDocument, Tag("object")],
                         Discriminator(_document_kind)]

    class RerankRequest(_Strict):
        model: StrictStr | None = Field(None, description="Omit, or pass the served model's name (see /readyz).")
        query: Query = Field(..., description="The search query (must contain a non-whitespace character).")
        documents: list[Document] = Field(..., min_length=1, max_length=limits.max_documents,
                                          description="Texts (or {text} objects) to rank.")
        top_n: PositiveInt | None = Field(None, description="Return only the best N results (default: all).")
        return_documents: bool = Field(False, strict=True, description="Echo each document's text in its result.")
        max_tokens_per_doc: PositiveInt | None = Field(None, description="Cut each document after this many tokens "
                                               "before scoring (otherwise long ones are scored in windows, MaxP).")
        raw_scores: bool = Field(False, strict=True, description="Also return each result's raw logit (`raw_score`).")
        timeout_ms: TimeoutMs | None = Field(None,
                                       description="Latency budget; when it runs out the input order is returned "
                                       "with `meta.degraded = true` and null relevance scores.")

    class RerankV2Request(RerankRequest):
        """Cohere's v2 rerank body: ``model`` is required (any served name, see ``--served-model-name``)."""

        model: StrictStr = Field(..., description="A name this server serves (see --served-model-name).")

    class SearchRequest(_Strict):
        query: Query
        user_id: UserId | None = Field(None, description="Who is searching (opaque): experiment arms are sticky "
                                       "per user, and feedback can be joined to it. Or send X-Rankwise-User.")
        k: ResultCount = Field(10, description="Results to return.")
        first_stage: Literal["bm25", "dense", "hybrid"] | None = Field(None, description="Default: the server's.")
        retrieve_k: ResultCount | None = Field(None, description="First-stage candidates (default: the server's).")
        rerank_k: RerankCount | None = Field(None, description="Candidates the reranker scores.")
        rerank_fusion: Literal["none", "rrf"] | None = Field(
            None, description="none: reranker order; rrf: reranker and first-stage ranks fused (default: the server's).")
        filters: dict[Annotated[str, StringConstraints(pattern=FILTER_KEY)], FilterValue] = Field(
            default_factory=dict, json_schema_extra={"additionalProperties": False, **names},
            description="Metadata key = value (a list: any of).")
        groups: list[GroupName] | None = Field(
            None, max_length=256, description="Search as a user in these groups (a gateway passes the signed-in "
            "user's): only public documents and those whose `groups` metadata names one of them are searched. "
            "Within the key's own groups; default: the key's groups (a key without groups: every document).")
        timeout_ms: TimeoutMs | None = Field(None,
                                       description="Latency budget; when it runs out the first-stage order is "
                                       "returned with `degraded = true`.")

    return RerankRequest, RerankV2Request, SearchRequest


class ResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(..., description="Position of the document in the request.")
    relevance_score: float | None = Field(..., description="Calibrated 0..1 score (sigmoid of the logit); "
                                          "null only in a degraded response.")
    raw_score: float | None = Field(None, description="The model's logit (only with raw_scores).")
    document: ResultDocument | None = Field(None, description="Only with return_documents.")


class ApiVersion(BaseModel):
    version: str = "2"


class BilledUnits(BaseModel):
    search_units: int = 1


class RerankMeta(BaseModel):
    api_version: ApiVersion = ApiVersion()
    billed_units: BilledUnits = BilledUnits()
    model: str
    model_sha256: str
    degraded: bool = Field(..., description="True when the latency budget ran out and the input order was returned.")
    warnings: list[str] = []
    cache_hits: int = Field(..., description="Documents whose scores came from the score cache.")
    experiment: ExperimentInfo | None = None
    cost: Cost | None = None
    num_split: int = Field(..., description="Documents longer than the model's window, scored in windows.")
    timings_ms: dict[str, float]


class RerankResponse(BaseModel):
    id: str
    request_id: str = Field(..., description="Joins this answer to the audit log and to /v1/feedback.")
    results: list[RerankResult]
    meta: RerankMeta


class SearchReply(BaseModel):
    """``rankwise search --json``'s object, plus the request id and the degraded flag."""

    id: str
    request_id: str = Field(..., description="Joins this answer to the audit log and to /v1/feedback.")
    degraded: bool
    warnings: list[str] = []
    experiment: ExperimentInfo | None = None
    cost: Cost | None = None
    query: str
    results: list[SearchResult]
    provenance: Provenance
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    message: str = Field(..., description="What went wrong and what to do, in one line.")
    detail: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    reranker: str | None = None
    reranker_sha256: str | None = None
    index_fingerprint: str | None = None
    #: role (production, canary, arm:NAME, shadow) → the version it serves, and problems that do not block
    #: serving (a shadow that failed, a promoted version that did not load)
    models: dict[str, str] | None = None
    problems: dict[str, str] | None = None
