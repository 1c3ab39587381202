# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench profile bench-quick faults availability broker-kills broker-partition network-faults soak overload fuzz psql schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  ## migrate and serve everything on 127.0.0.1:8080, plain HTTP on loopback (local broker unless IPAM_KAFKA_BOOTSTRAP is set)
	IPAM_LOG_FORMAT=$${IPAM_LOG_FORMAT:-console} IPAM_PLAIN_HTTP=$${IPAM_PLAIN_HTTP:-true} $(BIN)/ipam serve

test: $(STAMP)  ## the whole suite on real services (local broker and Postgres, or Docker, or IPAM_TEST_*)
	$(BIN)/ruff check ipam tests bench examples
	$(BIN)/lint-imports
	$(BIN)/mypy ipam
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)  ## every scenario on Apache Kafka, then on the local broker: one targets line (JSON) per broker
	$(BIN)/python -m bench --broker apache-kafka $(BENCH_ARGS)
	$(BIN)/python -m bench --broker local $(BENCH_ARGS)

profile: $(STAMP)  ## py-spy through the latency, webhook and pipeline scenarios: collapsed stacks and top frames in .ipam/profiles
	$(BIN)/python -m bench --only latency,webhook,pipeline --rates 100,500 --webhook-rates 200 --seconds 20 --profile .ipam/profiles $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

faults: $(STAMP)  ## fault injection: FAULT_RUNS seeded runs of FAULT_SECONDS each (one JSON line per run)
	$(BIN)/python -m tests.faults --scenario $${FAULT_SCENARIO:-chaos} --runs $${FAULT_RUNS:-50} --seconds $${FAULT_SECONDS:-20} --seed $${FAULT_SEED:-1}

availability: $(STAMP)  ## kill -9 of one allocator or projector every 8-12 s under 8 REST clients: 2xx share and hand-over times
	$(BIN)/python -m tests.faults --scenario kills --runs $${FAULT_RUNS:-5} --seconds $${FAULT_SECONDS:-120} --seed $${FAULT_SEED:-1}

broker-kills: $(STAMP)  ## three Apache Kafka nodes, the busiest leader kill -9'd every 20-30 s under 8 REST clients and 20 reviews/s
	$(BIN)/python -m tests.faults --scenario broker-kills --runs $${FAULT_RUNS:-1} --seconds $${FAULT_SECONDS:-300} --seed $${FAULT_SEED:-1}

broker-partition: $(STAMP)  ## three Apache Kafka nodes in namespaces of their own, the busiest leader cut from the other two (not from ipam) for 10-20 s every 20-30 s
	$(BIN)/python -m tests.faults --scenario broker-partition --runs $${FAULT_RUNS:-1} --seconds $${FAULT_SECONDS:-300} --seed $${FAULT_SEED:-1}

network-faults: $(STAMP)  ## one allocator and one projector in a network namespace, cut from Postgres or the broker every 2-5 s for 3-10 s
	$(BIN)/python -m tests.faults --scenario network --runs $${FAULT_RUNS:-5} --seconds $${FAULT_SECONDS:-60} --seed $${FAULT_SEED:-1}

soak: $(STAMP)  ## mixed load (leases, releases, repeats, reviews, CNI ADD/DEL) for SOAK_MINUTES (60) on SOAK_BROKER (apache-kafka), a test Kubernetes API feeding the watcher: JSON per minute
	$(BIN)/python -m bench.soak --minutes $${SOAK_MINUTES:-60} --broker $${SOAK_BROKER:-apache-kafka}

overload: $(STAMP)  ## twice the measured REST capacity for OVERLOAD_SECONDS (60) on each broker: answers within the deadline, memory, recovery
	$(BIN)/python -m bench.overload --broker apache-kafka --seconds $${OVERLOAD_SECONDS:-60}
	$(BIN)/python -m bench.overload --broker local --seconds $${OVERLOAD_SECONDS:-60}

fuzz: $(STAMP)  ## the webhooks' fuzz at full length (1,500 malformed reviews each; make test runs 300)
	IPAM_FUZZ_REVIEWS=$${FUZZ_REVIEWS:-1500} $(BIN)/pytest -q tests/test_webhook_fuzz.py

psql: $(STAMP)  ## psql (the embedded PostgreSQL's own) on make run's database
	$$($(BIN)/python -c 'from ipam.devenv import client_binary; print(client_binary("psql"))') $${IPAM_DATABASE_URL:-postgresql://postgres@127.0.0.1:55432/ipam}

schemas: $(STAMP)
	$(BIN)/ipam schemas export

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
