"""The declarative mapping (``stock:`` / ``prices:`` / ``lookups:`` blocks): pydantic models only.

Rules are small SQL expressions (sqlglot); cdc.rules compiles them for streamed rows and transpiles them
for snapshot / reconcile SELECTs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StockMapping(_Strict):
    table: str = Field(description="schema.table (PostgreSQL) or table (MySQL) holding stock rows")
    sku: str = Field(description="SQL expression giving the SKU")
    warehouse: str = Field(description="SQL expression giving the ERP warehouse code")
    quantity: str = Field(description="SQL expression giving the quantity this row contributes")
    locations: dict[str, str] = Field(
        min_length=1, description="ERP warehouse code -> shop location; warehouses of one location are summed"
    )
    safety_stock: int = Field(0, ge=0, description="subtracted from every location's sum")
    key: list[str] | None = Field(
        None, description="columns identifying a row (default: the table's primary key / replica identity)"
    )

    def location_of(self, warehouse: object) -> str | None:
        return self.locations.get(str(warehouse)) if warehouse is not None else None
