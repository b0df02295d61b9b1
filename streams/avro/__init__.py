"""Avro with a Confluent Schema Registry: the wire format, schemas, rendering, the registry.

Consuming (`sendingProtocol: AVRO`): a value in the Confluent wire format (magic byte 0, the
4-byte big-endian schema id, Avro binary) is decoded with the writer schema fetched from the
registry by id and cached; the handler sees it as JSON-like data, rendered by `render`:

    Avro                         handlers see
    null, boolean, int, long     null, true/false, number
    float, double                number; NaN and infinities as "NaN", "Infinity", "-Infinity"
    string                       text
    bytes, fixed                 base64 text (standard alphabet, padded)
    enum                         the symbol, as text
    array / map / record         list / object / object (fields in schema order)
    union                        the value of the branch written, unwrapped (no {"type": ...})
    decimal                      text with the exact digits and scale: "12.30"
    uuid                         text
    date                         "2024-05-01"
    time-millis / time-micros    "13:45:00.250" / "13:45:00.250123"
    timestamp-millis / -micros   "2024-05-01T13:45:00.250Z" (UTC; micros when present)
    local-timestamp-*            the same without the Z

A key in the wire format is decoded the same way and shown as text (a JSON text when it is not
a string); a key that is not Avro (or whose schema id the registry does not know) is shown as
STRING integrations show keys.

Publishing takes JSON-like data back through the same rules (`datum.to_datum`): text for bytes
is base64, ISO text or epoch numbers for dates and timestamps, text or numbers for decimals; a
union takes the first branch the value fits, or the Avro JSON form {"branch name": value}.
"""
