-- A small ERP: stock per item and warehouse. erpsync only reads it (plus its slot and heartbeat).
CREATE TABLE stock_levels (
    id             bigserial PRIMARY KEY,
    sku            text        NOT NULL,
    warehouse_code text        NOT NULL,
    on_hand        numeric(12,3) NOT NULL DEFAULT 0,
    reserved       numeric(12,3) NOT NULL DEFAULT 0,
    note           text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sku, warehouse_code)
);
