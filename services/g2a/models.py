"""The Export API's answers as pydantic models: validated strictly, a malformed answer is an
error (the client raises `G2AProtocolError`), never a guess.

The tolerance is G2A's, not pydantic's defaults: ids may come as numbers, counts as digit
strings, prices as JSON numbers or strings (parsed to Decimal, never float); an empty
string is "absent" for optional text; dates are `yyyy-mm-dd hh:mm:ss` in UTC; a boolean is
never a number or a text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
)

from services.g2a.errors import G2AProtocolError

G2A_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
AnswerT = TypeVar("AnswerT", bound="_Answer")


def _no_bool(value: object) -> object:
    # JSON `true` would pass as 1 (int) in pydantic's lax mode; in G2A's answers it never is.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a value here")
    return value


def _id_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


def _g2a_datetime(value: object) -> object:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("not a yyyy-mm-dd hh:mm:ss string")
    return datetime.strptime(value, G2A_DATETIME_FORMAT).replace(tzinfo=UTC)


def _confirmed(value: bool) -> bool:
    if not value:
        raise ValueError("payment not confirmed (status is not true)")
    return value


# A required text that G2A may send as an integer (ids): str or int, never empty.
Text = Annotated[str, StringConstraints(strict=True, min_length=1), BeforeValidator(_id_text)]
OptionalText = Annotated[StrictStr | None, BeforeValidator(_empty_is_none)]
Count = Annotated[NonNegativeInt, BeforeValidator(_no_bool)]
Price = Annotated[Decimal, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
G2ADateTime = Annotated[datetime | None, BeforeValidator(_g2a_datetime)]


class _Answer(BaseModel):
    # Frozen: answers are values (compared, shared between threads), never edited.
    model_config = ConfigDict(frozen=True)


class G2AProduct(_Answer):
    id: Text
    name: Text
    slug: Text
    qty: Count
    min_price: Price | None = Field(None, alias="minPrice")
    retail_min_price: Price | None = None
    updated_at: G2ADateTime = None
    platform: OptionalText = None
    region: OptionalText = None
    cover_image: OptionalText = Field(None, alias="coverImage")
    small_image: OptionalText = Field(None, alias="smallImage")
    thumbnail: OptionalText = None

    @property
    def g2a_price(self) -> Decimal | None:
        """What we pay G2A: the retail price, else the marketplace minimum."""
        return self.retail_min_price if self.retail_min_price is not None else self.min_price

    @property
    def image_url(self) -> str | None:
        return self.cover_image or self.small_image or self.thumbnail


class ProductPage(_Answer):
    total: Count
    page: Count
    products: list[G2AProduct] = Field(alias="docs")


class CreatedOrder(_Answer):
    order_id: Text
    price: Price
    currency: Text


class Payment(_Answer):
    status: Annotated[StrictBool, AfterValidator(_confirmed)]
    transaction_id: Text


class OrderDetails(_Answer):
    status: Text
    price: Price
    currency: Text


class KeyAnswer(_Answer):
    key: Annotated[str, StringConstraints(strict=True, min_length=1)]


def parse_answer(answer: type[AnswerT], data: dict[str, Any], endpoint: str) -> AnswerT:
    """`data` as an `answer`, or `G2AProtocolError` naming the first field that is wrong."""
    try:
        return answer.model_validate(data)
    except ValidationError as exc:
        # Where and what, never the input: an answer may hold a key or other secrets.
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "answer"
        more = exc.error_count() - 1
        raise G2AProtocolError(
            "SHAPE", f"{endpoint} answer: {where}: {first['msg']}"
            + (f" (+{more} more)" if more else "")
        ) from None
