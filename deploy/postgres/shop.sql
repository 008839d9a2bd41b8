-- The shop tables whose changes the CDC reader captures (`streamml cdc --tables public.users,public.items`).
-- Their columns derive exactly the contract schemas schemas/avro/cdc_shop_{users,items}.avsc; the
-- docker-compose `postgres` service runs this at first start, and the tests use it as well.
CREATE TYPE tier AS ENUM ('free', 'plus', 'premium');
CREATE TABLE users (user_id text PRIMARY KEY, tier tier NOT NULL DEFAULT 'free', country text NOT NULL,
                    signup_ts timestamptz NOT NULL, marketing_opt_in boolean NOT NULL DEFAULT false);
CREATE TABLE items (item_id text PRIMARY KEY, category text NOT NULL, price double precision NOT NULL,
                    brand text NOT NULL);
-- FULL: updates and deletes carry the whole old row in `before` (DEFAULT sends only the key of a delete).
ALTER TABLE items REPLICA IDENTITY FULL;
