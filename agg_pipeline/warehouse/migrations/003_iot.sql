-- Devices and sensors, kept with the old ETL's names: a (device, field) pair seen for the
-- first time is registered automatically (iot.devices, iot.sensors); sensor types come
-- from the series catalogue.
CREATE TABLE IF NOT EXISTS iot.devices (
    id          serial PRIMARY KEY,
    device_code text NOT NULL UNIQUE,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS iot.sensor_types (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    unit        text NOT NULL,
    description text
);

CREATE TABLE IF NOT EXISTS iot.sensors (
    id             serial PRIMARY KEY,
    device_id      integer NOT NULL REFERENCES iot.devices (id),
    sensor_type_id integer NOT NULL REFERENCES iot.sensor_types (id),
    field          text NOT NULL,
    sensor_code    text NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, field)
);
