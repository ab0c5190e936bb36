-- A Dolibarr-like ERP schema on MariaDB (the columns erpsync reads; real Dolibarr tables have more).
CREATE TABLE llx_product (
    rowid INT AUTO_INCREMENT PRIMARY KEY, ref VARCHAR(128) NOT NULL, label VARCHAR(255),
    tosell TINYINT NOT NULL DEFAULT 1, seuil_stock_alerte FLOAT, UNIQUE KEY uk_product_ref (ref)
) ENGINE=InnoDB;
CREATE TABLE llx_entrepot (
    rowid INT AUTO_INCREMENT PRIMARY KEY, ref VARCHAR(128) NOT NULL, statut TINYINT NOT NULL DEFAULT 1
) ENGINE=InnoDB;
CREATE TABLE llx_product_stock (
    rowid INT AUTO_INCREMENT PRIMARY KEY, fk_product INT NOT NULL, fk_entrepot INT NOT NULL,
    reel DOUBLE, UNIQUE KEY uk_product_stock (fk_product, fk_entrepot)
) ENGINE=InnoDB;
-- price history: one line per change; the latest date_price of a level is the price in force
CREATE TABLE llx_product_price (
    rowid INT AUTO_INCREMENT PRIMARY KEY, fk_product INT NOT NULL, price_level SMALLINT NOT NULL DEFAULT 1,
    date_price DATETIME NOT NULL, price DECIMAL(24,8), price_ttc DECIMAL(24,8), tva_tx DECIMAL(7,4)
) ENGINE=InnoDB;
