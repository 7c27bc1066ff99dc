# wapphook: the two commands of the README, and their helpers.
#   make run   installs what is missing, builds, serves hooks.yaml.example
#   make test  installs what is missing, builds Release and ASan+UBSan and runs the whole
#              suite in both, then the concurrent suites under ThreadSanitizer
BUILD      ?= build
SAN_BUILD  ?= build-sanitize
TSAN_BUILD ?= build-tsan
JOBS       ?= $(shell nproc)
RUN_DIR    := $(BUILD)/run
DEV_SECRET := wapphook-development-secret

# Debian 12 packages: libraries, the test client (libcurl), the Prometheus text parser the
# tests check /metrics with, tools used by `make run`.
DEPS := build-essential cmake pkg-config libcivetweb-dev libssl-dev libjansson-dev \
        liblua5.4-dev libyaml-dev libcmocka-dev libcurl4-openssl-dev libsqlite3-dev \
        libsystemd-dev python3-prometheus-client openssl curl

.PHONY: all deps build build-sanitize build-tsan test run check clean

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

test: build build-sanitize build-tsan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(SAN_BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(TSAN_BUILD) && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --output-on-failure -j $(JOBS) -L concurrent

# A self-signed certificate for https://127.0.0.1:8443, made once.
$(RUN_DIR)/server.pem: | deps
	mkdir -p $(RUN_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
	  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(RUN_DIR)/key.pem -out $(RUN_DIR)/cert.pem 2>/dev/null
	cat $(RUN_DIR)/key.pem $(RUN_DIR)/cert.pem > $@ && rm $(RUN_DIR)/key.pem && chmod 600 $@

run: build $(RUN_DIR)/server.pem
	@if [ -z "$$WAPPCLOUD_SECRET" ]; then \
	  echo "################################################################################"; \
	  echo "# WARNING: WAPPCLOUD_SECRET is unset. Using the DEVELOPMENT secret:"; \
	  echo "#     $(DEV_SECRET)"; \
	  echo "# Anyone who reads this can sign requests. Never use it in production."; \
	  echo "################################################################################"; \
	fi
	WAPPCLOUD_SECRET="$${WAPPCLOUD_SECRET:-$(DEV_SECRET)}" \
	  exec $(BUILD)/wapphook serve -c hooks.yaml.example --log-format text

check: build $(RUN_DIR)/server.pem
	WAPPCLOUD_SECRET="$${WAPPCLOUD_SECRET:-$(DEV_SECRET)}" $(BUILD)/wapphook check -c hooks.yaml.example

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(TSAN_BUILD)
