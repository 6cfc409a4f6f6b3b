-- Hand-offs a worker may ask for again when a server killed mid-reply lost the answer, but
-- nobody else may: the id the worker gave its secrets request, and for a batch job, the hash of
-- its spent bootstrap token with the id it gave that exchange.
ALTER TABLE tasks ADD COLUMN secrets_delivery TEXT;
ALTER TABLE tasks ADD COLUMN bootstrap_spent BLOB;
ALTER TABLE tasks ADD COLUMN bootstrap_exchange TEXT;
