-- An Odoo-like ERP schema (the columns erpsync reads; real Odoo tables have many more).
CREATE TABLE product_product (
    id integer PRIMARY KEY, default_code varchar(64), active boolean NOT NULL DEFAULT true,
    sale_ok boolean NOT NULL DEFAULT true, x_safety_stock numeric(12,3)
);
CREATE TABLE stock_location (
    id integer PRIMARY KEY, barcode varchar(64), usage varchar(16) NOT NULL DEFAULT 'internal'
);
CREATE TABLE stock_quant (
    id serial PRIMARY KEY, product_id integer, location_id integer, lot_id integer,
    quantity numeric(16,4) NOT NULL DEFAULT 0, reserved_quantity numeric(16,4)
);
CREATE TABLE product_pricelist (id integer PRIMARY KEY, name varchar(64), currency_code char(3));
CREATE TABLE product_pricelist_item (
    id serial PRIMARY KEY, pricelist_id integer NOT NULL, product_id integer,
    fixed_price numeric(16,4), date_start timestamp, date_end timestamp
);
