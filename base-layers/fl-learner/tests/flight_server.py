"""An Arrow Flight server speaking the FLOps ML data server's protocol, for tests.

list_flights takes criteria `{"data_tags": [...]}` and lists one flight per matching tag;
do_get streams it. `python flight_server.py HOST:PORT` serves synthetic tabular data under
the tags `synthetic-a` and `synthetic-b` (columns x1, x2, label; label = x1 + x2 > 0).
"""

import json
import sys

import numpy as np
import pyarrow
import pyarrow.flight as flight


def synthetic(n: int, seed: int) -> pyarrow.Table:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    label = (x1 + x2 > 0).astype(np.int64)
    return pyarrow.table({"x1": x1, "x2": x2, "label": label})


class DataServer(flight.FlightServerBase):
    def __init__(self, location: str, tables: dict):
        super().__init__(location)
        self.tables = tables
        self.requests = []

    def _info(self, tag: str) -> flight.FlightInfo:
        table = self.tables[tag]
        descriptor = flight.FlightDescriptor.for_path(tag)
        # Advertise an unusable address, as the real server does (0.0.0.0).
        endpoint = flight.FlightEndpoint(tag, ["grpc+tcp://0.0.0.0:1"])
        return flight.FlightInfo(table.schema, descriptor, [endpoint], table.num_rows, -1)

    def list_flights(self, context, criteria):
        wanted = json.loads(criteria.decode())["data_tags"]
        self.requests.append(wanted)
        for tag in sorted(self.tables):
            if tag in wanted:
                yield self._info(tag)

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])


def default_tables() -> dict:
    return {"synthetic-a": synthetic(200, 1), "synthetic-b": synthetic(200, 2)}


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:11027"
    server = DataServer(f"grpc+tcp://{address}", default_tables())
    print(f"serving on {address}", flush=True)
    server.serve()
