# Set up the environment, run the demo inspection and the tests.
#
# Every target creates or reuses .venv: a Python venv with the ROS 2 Jazzy
# wheels, PyTorch and timm, hetnet_ros_msgs built with cmake and installed
# into the venv, and hetnet_ros installed. Each step reruns only when its
# inputs changed.

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
DATA ?= $(abspath $(CURDIR)/../shared/data)
CHECKPOINT ?=
DEMO_CHECKPOINT := $(CURDIR)/models/demo_screw.pt
PART_ID ?= demo-part-001
PYTEST_ARGS ?=

# The ROS 2 environment that a sourced ROS installation would provide.
export AMENT_PREFIX_PATH := $(VENV)
export LD_LIBRARY_PATH := $(VENV)/lib$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export HETNET_DATA := $(DATA)
export PYTHONUNBUFFERED := 1

MSG_SOURCES := $(wildcard hetnet_ros_msgs/msg/*.msg hetnet_ros_msgs/action/*.action) \
	hetnet_ros_msgs/CMakeLists.txt hetnet_ros_msgs/package.xml
PKG_SOURCES := $(shell find hetnet_ros -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.rviz' -o -name '*.xml' -o -name '*.cfg' \) -not -path '*/test/*' -not -path '*/__pycache__/*')

.PHONY: all env system-deps demo test clean

all: env

env: $(VENV)/.hetnet_ros

$(VENV)/.requirements: requirements.txt | system-deps
	@echo "==> Creating $(VENV) with the ROS 2 Jazzy wheels, PyTorch and timm"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	@# Lines appended to activate give an interactive shell the same environment as make.
	grep -q AMENT_PREFIX_PATH $(BIN)/activate || printf '%s\n' \
		'export AMENT_PREFIX_PATH="$$VIRTUAL_ENV$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH}"' \
		'export LD_LIBRARY_PATH="$$VIRTUAL_ENV/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"' \
		'export ROS_AUTOMATIC_DISCOVERY_RANGE="$${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"' \
		>> $(BIN)/activate
	touch $@

$(VENV)/.hetnet_ros_msgs: $(VENV)/.requirements $(MSG_SOURCES) | build
	@echo "==> Building hetnet_ros_msgs with cmake into $(VENV)"
	cmake -S hetnet_ros_msgs -B build/hetnet_ros_msgs -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH=$(VENV) -DCMAKE_INSTALL_PREFIX=$(VENV) \
		-DPython3_EXECUTABLE=$(BIN)/python -DBUILD_TESTING=OFF > build/cmake-configure.log 2>&1 \
		|| (cat build/cmake-configure.log; exit 1)
	cmake --build build/hetnet_ros_msgs -j 2 > build/cmake-build.log 2>&1 \
		|| (tail -50 build/cmake-build.log; exit 1)
	cmake --install build/hetnet_ros_msgs > build/cmake-install.log 2>&1 \
		|| (cat build/cmake-install.log; exit 1)
	touch $@

$(VENV)/.hetnet_ros: $(VENV)/.hetnet_ros_msgs $(PKG_SOURCES)
	@echo "==> Installing hetnet_ros into $(VENV)"
	$(BIN)/pip install --quiet --no-deps --no-build-isolation ./hetnet_ros
	touch $@

build:
	mkdir -p build

# pyrealsense2 loads libusb-1.0 at import time. As root on Debian or Ubuntu the
# package is installed here; otherwise the message says what to install.
system-deps:
	@ldconfig -p | grep -q 'libusb-1.0.so.0 ' || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
			echo "==> Installing libusb-1.0-0 (needed by pyrealsense2)"; \
			(apt-get install -y -q libusb-1.0-0 || (apt-get update -q && apt-get install -y -q libusb-1.0-0)) > /dev/null; \
		else \
			echo "libusb-1.0 is missing: install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0) and rerun"; exit 1; \
		fi; }

demo: env
	$(BIN)/python -m hetnet_ros.demo --data $(DATA)/mvtec_screw \
		--checkpoint "$(CHECKPOINT)" --default-checkpoint $(DEMO_CHECKPOINT) \
		--part-id $(PART_ID) --records $(CURDIR)/records

test: env
	$(BIN)/python -m pytest hetnet_ros/test $(PYTEST_ARGS)

clean:
	rm -rf build $(VENV) records models

# Flexiv Rizon check: flexivrdk 1.9 has wheels for Python 3.10 and 3.12 only, so
# the Flexiv back-end is checked in a venv of its own with what the inspection
# node imports (no PyTorch) and its own build of hetnet_ros_msgs. No robot is
# needed: scripts/flexiv_check.py gives the SDK only the loopback interface.
PYTHON312 ?= $(or $(wildcard /root/.pyenv/versions/3.12.1/bin/python3.12),python3.12)
FLEXIV_VENV := $(CURDIR)/.venv-flexiv
FLEXIV_BIN := $(FLEXIV_VENV)/bin
FLEXIV_ENV := AMENT_PREFIX_PATH=$(FLEXIV_VENV) LD_LIBRARY_PATH=$(FLEXIV_VENV)/lib
# Lines of requirements.txt that the inspection node needs, with their version pins.
FLEXIV_REQUIREMENT_LINES := '^(ros-jazzy-|catkin-pkg|numpy|opencv-python-headless|PyYAML)'

.PHONY: flexiv-check

flexiv-check: $(FLEXIV_VENV)/.hetnet_ros_msgs
	$(FLEXIV_ENV) PYTHONPATH=$(CURDIR)/hetnet_ros $(FLEXIV_BIN)/python scripts/flexiv_check.py

$(FLEXIV_VENV)/.requirements: requirements.txt
	@echo "==> Creating $(FLEXIV_VENV) with flexivrdk 1.9 and the ROS 2 Jazzy wheels"
	test -x $(FLEXIV_BIN)/python || $(PYTHON312) -m venv $(FLEXIV_VENV)
	$(FLEXIV_BIN)/pip install --quiet --upgrade pip
	@# xargs passes the lines as arguments without shell globbing of 'ros-jazzy-rclpy[fastrtps]'.
	grep -E $(FLEXIV_REQUIREMENT_LINES) requirements.txt \
		| xargs $(FLEXIV_BIN)/pip install --quiet flexivrdk==1.9.4.1
	touch $@

$(FLEXIV_VENV)/.hetnet_ros_msgs: $(FLEXIV_VENV)/.requirements $(MSG_SOURCES) | build
	@echo "==> Building hetnet_ros_msgs with cmake into $(FLEXIV_VENV)"
	$(FLEXIV_ENV) cmake -S hetnet_ros_msgs -B build/hetnet_ros_msgs_flexiv -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH=$(FLEXIV_VENV) -DCMAKE_INSTALL_PREFIX=$(FLEXIV_VENV) \
		-DPython3_EXECUTABLE=$(FLEXIV_BIN)/python -DBUILD_TESTING=OFF \
		> build/cmake-flexiv-configure.log 2>&1 || (cat build/cmake-flexiv-configure.log; exit 1)
	$(FLEXIV_ENV) cmake --build build/hetnet_ros_msgs_flexiv -j 2 > build/cmake-flexiv-build.log 2>&1 \
		|| (tail -50 build/cmake-flexiv-build.log; exit 1)
	$(FLEXIV_ENV) cmake --install build/hetnet_ros_msgs_flexiv > build/cmake-flexiv-install.log 2>&1 \
		|| (cat build/cmake-flexiv-install.log; exit 1)
	touch $@

# Benchmarks: hetnet-bench (runtimes and the anomalib peer) and the ROS overhead
# benchmark. The benchmark-only packages install into .venv. Passing the torch and
# torchvision pins of requirements.txt along keeps anomalib from replacing PyTorch.
BENCH_ARGS ?= --output $(CURDIR)/build/bench.jsonl

.PHONY: bench-env bench

bench-env: $(VENV)/.bench

$(VENV)/.bench: requirements-bench.txt $(VENV)/.hetnet_ros
	@echo "==> Installing the benchmark packages (anomalib, psutil) into $(VENV)"
	$(BIN)/pip install --quiet -r requirements-bench.txt $$(grep -E '^torch(vision)?==' requirements.txt)
	touch $@

bench: bench-env | build
	$(BIN)/hetnet-bench $(BENCH_ARGS)
