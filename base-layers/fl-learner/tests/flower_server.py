"""A Flower server (the legacy start_server API FLOps uses) for tests.

    python flower_server.py [address] [rounds] [min_clients]

Runs `rounds` rounds (default 1) of fit + evaluate once `min_clients` clients (default 1) are
connected, then ends the session.

Prints one JSON line `FLOWER_RESULT {"fit": n, "evaluate": n, "loss": x, "accuracy": y,
"clients": [n, ...], "fit_metrics": [{...}, ...], "evaluate_metrics": [{...}, ...]}` at the end,
`clients` being the clients connected when each round's training was sampled (what the server
holds, as opposed to the learners that exist), and the metrics those of every fit and evaluate
result received: everything a learner sent besides its parameters, loss and example counts. The
integration test runs this file with the flwr inside the learner image.
"""

import json
import sys

import flwr
from flwr.server.strategy import FedAvg


class Counting(FedAvg):
    n_fit = n_evaluate = 0
    accuracy = None
    clients = []
    fit_metrics, evaluate_metrics = [], []

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = super().configure_fit(server_round, parameters, client_manager)
        Counting.clients.append(client_manager.num_available())
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        Counting.n_fit += len(results)
        Counting.fit_metrics += [dict(res.metrics) for _, res in results]
        if failures:
            raise SystemExit(f"fit failures: {failures}")
        return super().aggregate_fit(server_round, results, failures)

    def aggregate_evaluate(self, server_round, results, failures):
        Counting.n_evaluate += len(results)
        Counting.evaluate_metrics += [dict(res.metrics) for _, res in results]
        if failures:
            raise SystemExit(f"evaluate failures: {failures}")
        if results:
            Counting.accuracy = results[0][1].metrics.get("accuracy")
        return super().aggregate_evaluate(server_round, results, failures)


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0:8080"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    strategy = Counting(
        min_fit_clients=clients,
        min_evaluate_clients=clients,
        min_available_clients=clients,
        fraction_evaluate=1.0,
        # Recorded above, not aggregated (FedAvg would warn without a function).
        fit_metrics_aggregation_fn=lambda metrics: {},
    )
    history = flwr.server.start_server(
        server_address=address,
        config=flwr.server.ServerConfig(num_rounds=rounds, round_timeout=300),
        strategy=strategy,
    )
    loss = history.losses_distributed[-1][1] if history.losses_distributed else None
    result = {"fit": Counting.n_fit, "evaluate": Counting.n_evaluate, "loss": loss,
              "accuracy": Counting.accuracy, "clients": Counting.clients,
              "fit_metrics": Counting.fit_metrics, "evaluate_metrics": Counting.evaluate_metrics}
    print("FLOWER_RESULT " + json.dumps(result, default=repr), flush=True)


if __name__ == "__main__":
    main()
