-- Source database of windfarm-etl: one 2 MW turbine reporting every minute.
--
-- Applied by `python -m api.seed_source` and mounted into the postgres_source
-- container's /docker-entrypoint-initdb.d. Safe to apply again: nothing is
-- duplicated and existing rows are left as they are.
--
-- Values are deterministic: noise comes from hashint8extended, an integer hash
-- of the minute, so two fresh databases hold the same values. Sensor gaps are
-- NULLs at about 0.2 % of the minutes of each signal.

CREATE TABLE IF NOT EXISTS data (
    "timestamp"        TIMESTAMP PRIMARY KEY,
    wind_speed         DOUBLE PRECISION,
    power              DOUBLE PRECISION,
    ambient_temprature DOUBLE PRECISION
);

-- A uniform number in [0, 1) for an integer position and a seed.
CREATE OR REPLACE FUNCTION windfarm_noise(pos bigint, seed bigint)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashint8extended(pos, seed) & 2147483647)::double precision / 2147483648.0
$$;

-- Smooth noise in [0, 1): hashed knots every `period` minutes, eased between.
CREATE OR REPLACE FUNCTION windfarm_smooth(minute bigint, period bigint, seed bigint)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (1 - s) * windfarm_noise(k, seed) + s * windfarm_noise(k + 1, seed)
    FROM (SELECT k, f * f * (3 - 2 * f) AS s
          FROM (SELECT minute / period AS k,
                       (minute % period)::double precision / period AS f) AS knot) AS eased
$$;

-- Power of a 2 MW turbine at wind speed `ws` (m/s), in kW: nothing below
-- cut-in (3 m/s) or from cut-out (25 m/s), cubic up to rated (12 m/s), then
-- capped at 2000 kW.
CREATE OR REPLACE FUNCTION windfarm_power_curve(ws double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN ws < 3 OR ws >= 25 THEN 0.0
        WHEN ws >= 12 THEN 2000.0
        ELSE 2000.0 * (ws ^ 3 - 27.0) / (1728.0 - 27.0)
    END
$$;

-- Fill every minute of [first_minute, last_minute] that is not there yet;
-- returns the number of rows inserted.
CREATE OR REPLACE FUNCTION windfarm_fill(first_minute timestamp, last_minute timestamp)
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH minutes AS (
        SELECT ts,
               (extract(epoch FROM ts) / 60)::bigint AS m,
               extract(epoch FROM ts - date_trunc('day', ts)) / 3600.0 AS hod
        FROM generate_series(date_trunc('minute', first_minute), last_minute,
                             interval '1 minute') AS ts
    ), weather AS (
        SELECT ts, m,
               greatest(0.0,
                   7.5
                   + 1.8 * sin(2 * pi() * (hod - 9) / 24)           -- afternoon peak
                   + 2.5 * sin(2 * pi() * m / 4752.0)               -- weather systems
                   + 1.5 * sin(2 * pi() * m / 10224.0 + 1)
                   + 4.0 * (windfarm_smooth(m, 90, 1) - 0.5)        -- slow variation
                   + 1.2 * (windfarm_noise(m, 2) - 0.5)             -- turbulence
               ) AS ws,
               3.0
               + 3.5 * sin(2 * pi() * (hod - 8) / 24)               -- daily cycle
               + 3.0 * (windfarm_smooth(m, 720, 3) - 0.5)
               + 0.4 * (windfarm_noise(m, 4) - 0.5) AS temp
        FROM minutes
    ), inserted AS (
        INSERT INTO data ("timestamp", wind_speed, power, ambient_temprature)
        SELECT ts,
               CASE WHEN windfarm_noise(m, 5) < 0.002 THEN NULL
                    ELSE round(ws::numeric, 3)::double precision END,
               CASE WHEN windfarm_noise(m, 6) < 0.002 THEN NULL
                    ELSE round(least(2000.0, windfarm_power_curve(ws)
                                             * (0.97 + 0.06 * windfarm_noise(m, 7)))::numeric,
                               2)::double precision END,
               CASE WHEN windfarm_noise(m, 8) < 0.002 THEN NULL
                    ELSE round(temp::numeric, 2)::double precision END
        FROM weather
        ORDER BY ts
        ON CONFLICT ("timestamp") DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM inserted
$$;

-- The default content: 2025-12-01 00:00 to 2025-12-10 23:59, 14,400 minutes.
SELECT windfarm_fill('2025-12-01 00:00:00', '2025-12-10 23:59:00');
