"""The declarative mapping (``lookups:`` / ``stock:`` / ``prices:`` blocks): pydantic models only.

Rules are small SQL expressions (sqlglot); cdc.mapping.compiled compiles them (cdc.mapping.rules) for
streamed rows and transpiles them for snapshot / reconcile SELECTs. A rule may call ``lookup(name, expr)``
to resolve a key through another ERP table declared under ``lookups:`` (kept current from the same change
stream).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

Rounding = Literal["half_up", "down", "up", "floor", "ceiling"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LookupMapping(_Strict):
    """``lookup(name, x)`` gives ``value`` of the row of ``table`` whose ``key`` column equals x, or NULL
    when there is none or ``filter`` is not true for it (e.g. an inactive item has no SKU)."""

    table: str = Field(description="[schema.]table to resolve keys through, as written in SQL: quoted names "
                       "exact, unquoted ones folded as the database does (PostgreSQL: lower case)")
    key: str = Field(description="column holding the key (unique in the table, e.g. the primary key); "
                     "quoted: exact, unquoted: folded like table")
    value: str = Field(description="SQL expression on that table's row giving the looked-up value")
    filter: str | None = Field(None, description="SQL condition; rows where it is not true resolve to NULL")


class StockMapping(_Strict):
    table: str = Field(description="[schema.]table holding stock rows, as written in SQL: quoted names exact "
                       "(\"OITM\"), unquoted ones folded as the database does (PostgreSQL: lower case)")
    sku: str = Field(description="SQL expression giving the SKU (may use lookup(name, expr)); its columns "
                     "are named like table: quoted (\"ItemCode\") exact, unquoted folded as the database "
                     "does")
    warehouse: str = Field(description="SQL expression giving the ERP warehouse code")
    quantity: str = Field(description="SQL expression giving the quantity this row contributes")
    reserved: str | None = Field(None, description="SQL expression subtracted from quantity (NULL = 0)")
    filter: str | None = Field(
        None, description="SQL condition; only rows where it is true count (e.g. sellable lots, active items)"
    )
    locations: dict[str, str] = Field(
        min_length=1, description="ERP warehouse code -> shop location; warehouses of one location are summed"
    )
    # never negative: a negative safety stock would sell stock the ERP does not have
    safety_stock: NonNegativeInt | dict[str, NonNegativeInt] = Field(
        0, description="subtracted from every location's sum; or a map shop location -> amount (missing: 0)"
    )
    safety_stock_per_sku: str | None = Field(
        None,
        description="SQL expression (e.g. a lookup on the item) subtracted too; the largest value over "
        "the rows of a (sku, location) counts",
    )
    key: list[str] | None = Field(
        None, description="columns identifying a row (default: the table's primary key / replica identity); "
        "quoted: exact, unquoted: folded like table"
    )

    def location_of(self, warehouse: object) -> str | None:
        return self.locations.get(str(warehouse)) if warehouse is not None else None

    def safety_for(self, location: str) -> int:
        s = self.safety_stock
        return s if isinstance(s, int) else s.get(location, 0)


class RoundingRule(_Strict):
    places: int = Field(2, ge=0, le=8)
    mode: Rounding = "half_up"


class PriceMapping(_Strict):
    """One fact per (sku, shop price list): among the rows valid now, the one with the latest valid_from
    (rows without one come last), then the lowest amount, then the currency in alphabetical order."""

    table: str = Field(description="[schema.]table holding price list lines, as written in SQL: quoted names "
                       "exact, unquoted ones folded as the database does (PostgreSQL: lower case)")
    sku: str = Field(description="SQL expression giving the SKU")
    price_list: str = Field(description="SQL expression giving the ERP price list")
    amount: str = Field(description="SQL expression giving the price")
    currency: str = Field(description="SQL expression giving the ISO currency (or a literal like 'EUR')")
    compare_at: str | None = Field(None, description="SQL expression giving the compare-at price")
    valid_from: str | None = Field(
        None, description="SQL expression: date/timestamp the line starts to apply"
    )
    valid_to: str | None = Field(
        None, description="SQL expression: date/timestamp it stops applying (exclusive)"
    )
    filter: str | None = Field(None, description="SQL condition; only lines where it is true count")
    rounding: RoundingRule = Field(default_factory=RoundingRule)
    list_map: dict[str, str] = Field(
        default_factory=dict,
        description="ERP price list -> shop price list (the sinks' price_lists map it to "
        "a price field); empty: every list keeps its ERP name; otherwise unmapped lists are ignored",
    )
    timezone: str = Field("UTC", description="time zone of dates and naive timestamps in valid_from/valid_to")
    key: list[str] | None = Field(
        None, description="columns identifying a row (default: the table's primary key / replica identity); "
        "quoted: exact, unquoted: folded like table"
    )

    def list_of(self, erp_list: object) -> str | None:
        if erp_list is None:
            return None
        return self.list_map.get(str(erp_list)) if self.list_map else str(erp_list)


class MappingSpec(_Strict):
    """What is mapped: the ``lookups:``, ``stock:`` and ``prices:`` blocks. erpsync's Config extends it with
    the source, sinks and the rest; ``CompiledMapping`` compiles it."""

    lookups: dict[str, LookupMapping] = Field(
        default_factory=dict, description="name -> key/value table that rules read with lookup(name, expr)")
    stock: StockMapping | None = None
    prices: PriceMapping | None = None
