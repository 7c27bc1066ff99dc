# wapphook: the two commands of the README, and their helpers.
#   make run   installs what is missing, builds, serves hooks.yaml.example
#   make test  installs what is missing, builds Release, ASan+UBSan and the Debian package,
#              runs the whole suite in both builds (the package's test among them), then
#              the concurrent suites under ThreadSanitizer
BUILD      ?= build
SAN_BUILD  ?= build-sanitize
TSAN_BUILD ?= build-tsan
FUZZ_BUILD ?= build-fuzz
DEB_BUILD  ?= build-deb
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := signature manifest lua_json request patterns
JOBS       ?= $(shell nproc)
RUN_DIR    := $(BUILD)/run
DEV_SECRET := wapphook-development-secret

# Debian 12 packages: libraries, the test clients (libcurl; slowhttptest, the attack tool of
# the overload tests), PostgreSQL (the shared spool and
# the cluster its tests start), the Prometheus text parser the
# tests check /metrics with, tools used by `make run`; faketime (the date-dependent suites
# run again a year ahead); file and dpkg-dev, which CPack's DEB generator needs for the
# package's Depends (a minimal Debian 12 has neither); clang-format, which the format test
# runs; chromium, chromium-driver and python3-selenium, for the console's browser tests.
DEPS := build-essential cmake pkg-config libcivetweb-dev libssl-dev libjansson-dev \
        liblua5.4-dev libyaml-dev libcmocka-dev libcurl4-openssl-dev libsqlite3-dev \
        libsystemd-dev libpq-dev postgresql python3 python3-prometheus-client openssl curl \
        slowhttptest faketime file dpkg-dev clang-format chromium chromium-driver \
        python3-selenium redis-server libhiredis-dev nats-server libnats-dev

.PHONY: all deps build build-sanitize build-tsan deb test run run-cert check bench bench-peers bench-attack fuzz clean

all: build

deps:
	@missing=$$(for p in $(DEPS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	  else echo "Missing Debian packages. Run as root:"; \
	       echo "  apt-get update && apt-get install -y $$missing"; exit 1; fi; \
	  echo "Installing missing Debian packages: $$missing"; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

$(SAN_BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Sanitize

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

build-sanitize: deps $(SAN_BUILD)/CMakeCache.txt
	cmake --build $(SAN_BUILD) -j $(JOBS)

$(TSAN_BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=TSan

build-tsan: deps $(TSAN_BUILD)/CMakeCache.txt
	cmake --build $(TSAN_BUILD) -j $(JOBS)

# The Debian package, built as Debian builds (prefix /usr), in $(DEB_BUILD)/wapphook_*.deb;
# the Release suite's deb_package test installs it into a scratch root and serves with it.
$(DEB_BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(DEB_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DBUILD_TESTING=OFF

deb: deps $(DEB_BUILD)/CMakeCache.txt
	cmake --build $(DEB_BUILD) -j $(JOBS)
	rm -f $(DEB_BUILD)/wapphook_*.deb
	cd $(DEB_BUILD) && cpack -G DEB >/dev/null
	@ls -l $(DEB_BUILD)/wapphook_*.deb

test: build build-sanitize build-tsan deb
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(SAN_BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(TSAN_BUILD) && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --output-on-failure -j $(JOBS) -L concurrent

# Load benchmark (wrk, loopback); bench-peers adds nginx + Lua, nginx and adnanh/webhook
# (Debian packages, installed on request) to the same run, with ratios.
BENCH_DEPS := wrk
PEER_DEPS  := webhook nginx libnginx-mod-http-lua lua-cjson

bench: build
	@$(MAKE) --no-print-directory DEPS="$(BENCH_DEPS)" deps
	bash bench/run.sh $(BUILD)

bench-peers: build
	@$(MAKE) --no-print-directory DEPS="$(BENCH_DEPS) $(PEER_DEPS)" deps
	@# the nginx package starts a service on port 80; the bench runs its own
	-systemctl stop nginx 2>/dev/null || true
	bash bench/run.sh $(BUILD) --peers

# Hostile clients (SPEC section 12): 1,000 slowhttptest connections for 30 s, slow headers then
# slow bodies, against the defaults while another address probes; see bench/attack.sh.
bench-attack: build
	bash bench/attack.sh $(BUILD)

# libFuzzer: each target for FUZZ_SECONDS (clang, ASan+UBSan), starting from the saved
# corpus; new inputs go to $(FUZZ_BUILD)/corpus/<target>, crashes to $(FUZZ_BUILD)/crash-*.
# A crash fails the run: add the input to tests/fuzz/corpus/<target> once it is fixed.
fuzz:
	@$(MAKE) --no-print-directory DEPS="clang libclang-rt-14-dev" deps
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DWH_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  (cd $(FUZZ_BUILD) && ./tests/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 \
	    -artifact_prefix=crash-$$t- -print_final_stats=1 corpus/$$t ../tests/fuzz/corpus/$$t \
	    2>fuzz_$$t.log) || { tail -40 $(FUZZ_BUILD)/fuzz_$$t.log; exit 1; }; \
	  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' $(FUZZ_BUILD)/fuzz_$$t.log; \
	done

# A self-signed certificate for https://127.0.0.1:8443, made when missing and made again when
# it expires within 30 days (a checkout kept for years must not serve an expired one).
run-cert: | deps
	@if ! openssl x509 -checkend 2592000 -noout -in $(RUN_DIR)/server.pem >/dev/null 2>&1; then \
	  mkdir -p $(RUN_DIR) && \
	  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
	    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	    -keyout $(RUN_DIR)/key.pem -out $(RUN_DIR)/cert.pem 2>/dev/null && \
	  cat $(RUN_DIR)/key.pem $(RUN_DIR)/cert.pem > $(RUN_DIR)/server.pem && \
	  rm $(RUN_DIR)/key.pem && chmod 600 $(RUN_DIR)/server.pem && \
	  echo "made $(RUN_DIR)/server.pem (self-signed, 825 days)"; \
	fi

run: build run-cert
	@if [ -z "$$WAPPCLOUD_SECRET" ]; then \
	  echo "################################################################################"; \
	  echo "# WARNING: WAPPCLOUD_SECRET is unset. Using the DEVELOPMENT secret:"; \
	  echo "#     $(DEV_SECRET)"; \
	  echo "# Anyone who reads this can sign requests. Never use it in production."; \
	  echo "################################################################################"; \
	fi
	WAPPCLOUD_SECRET="$${WAPPCLOUD_SECRET:-$(DEV_SECRET)}" \
	  exec $(BUILD)/wapphook serve -c hooks.yaml.example --log-format text

check: build run-cert
	WAPPCLOUD_SECRET="$${WAPPCLOUD_SECRET:-$(DEV_SECRET)}" $(BUILD)/wapphook check -c hooks.yaml.example

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD)
