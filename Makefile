# lockerd: one GNU Makefile. Objects go out of tree: build/ for the normal
# build, build-san/ for the sanitizer build that `make check` runs.
#
#   make deps    install the Debian packages (quick when they are present)
#   make         build lockerd, locksim and the tools into build/
#   make test    deps + build + unit and integration tests
#   make check   the same tests under ASan + UBSan + LSan, in build-san/
#   make run     deps + build + the controller against the simulator
#   make demo    deps + build + a narrated day at the locker (sim/demo.py)
#   make bench   deps + build + benchmarks (JSON lines on stdout); BENCH_ONLY=
#                modbus,rtu,idle,codes,drain,reserve,scale,fleet,slowdisk runs a subset
#   make fleet   deps + build + the fleet simulation alone (tests/bench/fleet.py:
#                N lockerds against one mosquitto; BENCH_FLEET_N=1,4,8,...)
#   make soak    deps + build + the soak-sized tests only: each test named in
#                SOAK_TESTS (tests/run.py -k, any of them) runs with SOAK_ENV
#                (SOAK=1, CHAOS_KILLS=300: the chaos test kills lockerd 300
#                times instead of the 30 of `make test`; POWERLOSS_SEEDS=20:
#                test_powerloss tries 20 loss patterns per cut point, not
#                3). A soak test joins by adding its name to SOAK_TESTS and
#                reading SOAK (or its own size variable, added to
#                SOAK_ENV); a unit test is also listed in SOAK_UNITS.
#   make fuzz    libFuzzer targets (clang), each for FUZZ_SECONDS; `make test`
#                replays their seeds and past crashes (fuzz-regress)
#   make install PREFIX=/usr/local DESTDIR=   the binaries, board profiles,
#                man pages, systemd unit and sysusers file, and
#                /etc/lockerd/lockerd.conf unless one is there; uninstall
#                removes them again but keeps the configuration and state

BUILD     ?= build
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
SBINDIR   ?= $(PREFIX)/sbin
DATADIR   ?= $(PREFIX)/share
MANDIR    ?= $(DATADIR)/man
SYSCONFDIR ?= /etc
UNITDIR   ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
PROFILEDIR := $(DATADIR)/lockerd/boards
DESTDIR   ?=
INSTALL   ?= install
SAN       ?= 0
CC        ?= cc
PKG_CONFIG ?= pkg-config
PYTHON    ?= /usr/bin/python3
# The compiler for what runs during the build (tools/embed), which is not
# CC when cross-compiling (make cross).
BUILD_CC  ?= $(CC)
VERSION   := 0.1.0

PKGS := libmodbus libmosquitto sqlite3 libsodium jansson inih libsystemd

DEB_PKGS := build-essential pkg-config libmodbus-dev libmosquitto-dev \
	mosquitto mosquitto-clients libsqlite3-dev sqlite3 libsodium-dev \
	libjansson-dev libinih-dev libcmocka-dev clang libclang-rt-14-dev \
	python3 python3-paho-mqtt python3-jsonschema python3-nacl python3-yaml valgrind \
	libfaketime libsystemd-dev systemd

WARN := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes \
	-Wshadow -Wformat=2
CFLAGS ?= -O2 -g
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DLOCKERD_VERSION='"$(VERSION)"' \
	-DLOCKERD_PROFILE_DIR='"$(PROFILEDIR)"' \
	$(WARN) $(CFLAGS) -MMD -MP -Iproto -Icontroller -Isim -I$(BUILD)/gen \
	$(PKG_CFLAGS)
ALL_LDFLAGS = $(LDFLAGS)
LIBS = $(PKG_LIBS) -lpthread -lm

ifeq ($(SAN),1)
ALL_CFLAGS  += -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
ALL_LDFLAGS += -fsanitize=address,undefined
endif

PROTO_SRC := proto/board.c proto/board_builtin.c proto/inicheck.c \
	proto/ledger.c proto/cmd.c
CORE_SRC  := controller/log.c controller/config.c controller/bank.c \
	controller/lockerd.c controller/jsonl.c \
	controller/store.c controller/mb.c controller/ctl.c controller/util.c \
	controller/resv.c controller/codes.c controller/throttle.c \
	controller/kiosk.c controller/staff.c controller/custody.c \
	controller/platform.c controller/link.c controller/notify.c \
	controller/mark.c
GEN_SRC   := $(BUILD)/gen/embedded.c

BOARD_FILES  := $(sort $(wildcard proto/boards/*.ini))
SCHEMA_FILES := $(sort $(wildcard schema/*.sql))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

PROTO_OBJ := $(call obj,$(PROTO_SRC)) $(BUILD)/obj/gen/embedded.o
CORE_OBJ  := $(call obj,$(CORE_SRC))

BINS := $(BUILD)/lockerd $(BUILD)/locksim $(BUILD)/kiosk $(BUILD)/mbping

UNIT_TESTS := $(BUILD)/test_board $(BUILD)/test_bank $(BUILD)/test_config \
	$(BUILD)/test_store $(BUILD)/test_physics $(BUILD)/test_resv \
	$(BUILD)/test_codes $(BUILD)/test_ledger $(BUILD)/test_guessing \
	$(BUILD)/test_cmd $(BUILD)/test_powerloss

.PHONY: all deps test check run demo bench fleet soak fuzz clean unit \
	integration _test _bench _fleet _soak install uninstall FORCE
all: $(BINS)

deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | \
		grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends $$missing; \
	fi

$(BUILD)/tools/embed: tools/embed.c
	@mkdir -p $(dir $@)
	$(BUILD_CC) -std=c11 $(WARN) -O2 -o $@ $<

$(GEN_SRC): $(BUILD)/tools/embed $(BOARD_FILES) $(SCHEMA_FILES) \
		controller/lockerd.conf
	@mkdir -p $(dir $@)
	{ $(BUILD)/tools/embed boards $(BOARD_FILES) && \
	  $(BUILD)/tools/embed schema $(SCHEMA_FILES) | grep -v '^#include' && \
	  $(BUILD)/tools/embed conf controller/lockerd.conf | \
	  grep -v '^#include'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/embedded.o: $(GEN_SRC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The profile folder is compiled into config.c: rebuild it when PREFIX
# (or DATADIR) changes, e.g. between `make` and `make install PREFIX=/usr`.
$(BUILD)/gen/paths.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(PROFILEDIR)' | cmp -s - $@ || echo '$(PROFILEDIR)' > $@
$(call obj,controller/config.c): $(BUILD)/gen/paths.stamp

$(BUILD)/lockerd: $(call obj,controller/main.c) $(CORE_OBJ) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/locksim: $(call obj,sim/locksim.c sim/physics.c) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/kiosk: $(call obj,sim/kiosk.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/codebench: $(call obj,tests/bench/codebench.c controller/resv.c controller/bank.c controller/codes.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/mbping: $(call obj,tests/bench/mbping.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# Unit tests link only the files under test (plus cmocka).
$(BUILD)/test_board: $(call obj,tests/unit/test_board.c) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka
$(BUILD)/test_bank: $(call obj,tests/unit/test_bank.c controller/bank.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ -lcmocka
$(BUILD)/test_config: $(call obj,tests/unit/test_config.c controller/config.c controller/log.c controller/util.c) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka
$(BUILD)/test_store: $(call obj,tests/unit/test_store.c controller/store.c controller/log.c controller/util.c) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

$(BUILD)/test_physics: $(call obj,tests/unit/test_physics.c sim/physics.c) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka
$(BUILD)/test_resv: $(call obj,tests/unit/test_resv.c controller/resv.c controller/bank.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ -lcmocka
$(BUILD)/test_codes: $(call obj,tests/unit/test_codes.c controller/codes.c controller/log.c controller/util.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka
$(BUILD)/test_ledger: $(call obj,tests/unit/test_ledger.c proto/ledger.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka
# The codec against the table the contract test runs through the schemas.
$(BUILD)/test_cmd: $(call obj,tests/unit/test_cmd.c proto/cmd.c)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka
# The real keypad and all it calls, with the clock, the boards and the
# MQTT client faked (the test defines mb_* and platform_*).
GUESS_WRAP := -Wl,--wrap=util_mono_ms,--wrap=util_wall_ms,--wrap=crypto_pwhash_str_verify
$(BUILD)/test_guessing: $(call obj,tests/unit/test_guessing.c $(filter-out controller/mb.c controller/platform.c,$(CORE_SRC))) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) $(GUESS_WRAP) -o $@ $^ $(LIBS) -lcmocka

# The whole controller with the boards and the MQTT client faked at the
# mb_* and platform_* interfaces (the test defines them), over a
# fault-injecting SQLite VFS.
$(BUILD)/test_powerloss: $(call obj,tests/unit/test_powerloss.c $(filter-out controller/mb.c controller/platform.c,$(CORE_SRC))) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

# The test targets install what they need first, then re-enter make so that
# pkg-config sees the freshly installed libraries.
test: deps
	@$(MAKE) --no-print-directory _test
	@$(MAKE) --no-print-directory fuzz-regress

check: deps
	@$(MAKE) --no-print-directory BUILD=build-san SAN=1 _test

# A slow disk for test_load (LD_PRELOAD; plain, also for SAN=1 runs).
$(BUILD)/libslowsync.so: tests/integration/slowsync.c
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O2 -shared -fPIC -o $@ $< -ldl

_test: $(BINS) $(UNIT_TESTS) $(BUILD)/libslowsync.so
	@$(PYTHON) tests/run.py --build $(BUILD) $(UNIT_TESTS)

unit: $(UNIT_TESTS)
	@$(PYTHON) tests/run.py --build $(BUILD) --unit-only $(UNIT_TESTS)

run: deps
	@$(MAKE) --no-print-directory all
	@$(PYTHON) sim/run.py --build $(BUILD)

demo: deps
	@$(MAKE) --no-print-directory all
	@$(PYTHON) sim/demo.py --build $(BUILD)

bench: deps
	@$(MAKE) --no-print-directory _bench

_bench: $(BINS) $(BUILD)/codebench
	@$(PYTHON) tests/bench/bench.py --build $(BUILD)

fleet: deps
	@$(MAKE) --no-print-directory _fleet

_fleet: $(BINS)
	@$(PYTHON) tests/bench/fleet.py --build $(BUILD)

SOAK_TESTS ?= test_chaos::test_chaos_kill9 test_load::test_load_100_commands_a_second \
	test_powerloss
SOAK_ENV   ?= SOAK=1 CHAOS_KILLS=300 POWERLOSS_SEEDS=20 UNIT_TIMEOUT=1800
# Unit tests that have a soak size (run.py -k picks them by name).
SOAK_UNITS := $(BUILD)/test_powerloss

soak: deps
	@$(MAKE) --no-print-directory _soak

_soak: $(BINS) $(SOAK_UNITS)
	@env $(SOAK_ENV) $(PYTHON) tests/run.py --build $(BUILD) \
		$(addprefix -k ,$(SOAK_TESTS)) $(SOAK_UNITS)

clean:
	rm -rf build build-san build-fuzz build-deb build-arm64 build-armhf

MAN1 := man/lockerctl.1 man/locksim.1 man/kiosk.1
MAN5 := man/lockerd.conf.5
MAN8 := man/lockerd.8
CONF_DEST := $(DESTDIR)$(SYSCONFDIR)/lockerd/lockerd.conf

# Paths the unit names, for this PREFIX.
$(BUILD)/lockerd.service: dist/lockerd.service.in FORCE
	@mkdir -p $(dir $@)
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		dist/lockerd.service.in > $@.tmp && mv $@.tmp $@

install: $(BUILD)/lockerd $(BUILD)/locksim $(BUILD)/kiosk \
		$(BUILD)/lockerd.service
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) \
		$(DESTDIR)$(PROFILEDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(SYSCONFDIR)/lockerd
	$(INSTALL) -m 0755 $(BUILD)/lockerd $(DESTDIR)$(SBINDIR)/lockerd
	$(INSTALL) -m 0755 $(BUILD)/locksim $(BUILD)/kiosk sim/lockerctl \
		$(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0644 $(BOARD_FILES) $(DESTDIR)$(PROFILEDIR)
	$(INSTALL) -m 0644 $(MAN1) $(DESTDIR)$(MANDIR)/man1
	$(INSTALL) -m 0644 $(MAN5) $(DESTDIR)$(MANDIR)/man5
	$(INSTALL) -m 0644 $(MAN8) $(DESTDIR)$(MANDIR)/man8
	$(INSTALL) -m 0644 $(BUILD)/lockerd.service $(DESTDIR)$(UNITDIR)
	$(INSTALL) -m 0644 dist/lockerd.sysusers \
		$(DESTDIR)$(SYSUSERSDIR)/lockerd.conf
	@if [ -e $(CONF_DEST) ]; then \
		echo "make install: keeping $(CONF_DEST); the new example is" \
		    "$(CONF_DEST).dist"; \
		$(INSTALL) -m 0644 dist/lockerd.conf $(CONF_DEST).dist; \
	else \
		echo "$(INSTALL) -m 0644 dist/lockerd.conf $(CONF_DEST)"; \
		$(INSTALL) -m 0644 dist/lockerd.conf $(CONF_DEST); \
	fi
	@[ -n "$(DESTDIR)" ] || echo "make install: next, as root:" \
	    "systemd-sysusers $(SYSUSERSDIR)/lockerd.conf;" \
	    "edit $(SYSCONFDIR)/lockerd/lockerd.conf;" \
	    "systemctl daemon-reload; systemctl enable --now lockerd"

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/lockerd $(DESTDIR)$(BINDIR)/locksim \
		$(DESTDIR)$(BINDIR)/kiosk $(DESTDIR)$(BINDIR)/lockerctl \
		$(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(MAN1))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man5/,$(notdir $(MAN5))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(MAN8))) \
		$(DESTDIR)$(UNITDIR)/lockerd.service \
		$(DESTDIR)$(SYSUSERSDIR)/lockerd.conf \
		$(addprefix $(DESTDIR)$(PROFILEDIR)/,$(notdir $(BOARD_FILES)))
	-rmdir $(DESTDIR)$(PROFILEDIR) $(DESTDIR)$(DATADIR)/lockerd 2>/dev/null
	@echo "make uninstall: kept $(DESTDIR)$(SYSCONFDIR)/lockerd and the" \
	    "state folder (/var/lib/lockerd under systemd)"

# Debian packages and ARM builds (debian/, tools/deb.sh, tools/cross.sh).
#   make deb [ARCH=arm64|armhf]  dpkg-buildpackage -us -uc -b into DEB_OUT
#                (lockerd, lockerd-tools), then lintian; ARCH cross-builds
#   make deps-cross  Debian's cross compilers, qemu-user and the arm64 and
#                armhf -dev packages (dpkg --add-architecture)
#   make cross ARCH=arm64|armhf  the binaries and unit tests into
#                build-ARCH, the unit tests run under qemu-user, the .debs,
#                and one end-to-end flow: the ARM lockerd under qemu against
#                the native locksim and mosquitto (tests/cross/e2e.py)
# make test builds, installs, runs, upgrades and purges the amd64 packages
# (tests/integration/test_package.py); make cross-all runs both ARM builds.
DEB_PKGS += debhelper dpkg-dev lintian file
# 64-bit file offsets on 32-bit targets (armhf): readdir() of the profile
# folder and stat() of a database past 2 GiB (a no-op on 64-bit ones).
ALL_CFLAGS += -D_FILE_OFFSET_BITS=64
CROSS_ARCHS := arm64 armhf
CROSS_DEB_PKGS = crossbuild-essential-arm64 crossbuild-essential-armhf qemu-user \
	$(foreach a,$(CROSS_ARCHS),$(addsuffix :$(a),libmodbus-dev libmosquitto-dev \
	libsqlite3-dev libsodium-dev libjansson-dev libinih-dev libsystemd-dev \
	libcmocka-dev pkgconf))
DEB_OUT ?= build-deb
ARCH    ?=
TRIPLET_arm64 := aarch64-linux-gnu
TRIPLET_armhf := arm-linux-gnueabihf

.PHONY: deb deps-cross cross cross-all _cross
deb: deps
	@tools/deb.sh $(DEB_OUT) $(ARCH)
	lintian --fail-on error,warning $(DEB_OUT)/lockerd_*_$(or $(ARCH),$(shell dpkg --print-architecture)).changes

deps-cross: deps
	@for a in $(CROSS_ARCHS); do dpkg --print-foreign-architectures | \
		grep -qx $$a || dpkg --add-architecture $$a; done
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(CROSS_DEB_PKGS)"

cross: deps-cross
	@case "$(ARCH)" in arm64|armhf) ;; *) echo "make cross: ARCH=arm64 or ARCH=armhf" >&2; exit 2;; esac
	@$(MAKE) --no-print-directory _cross
	@tools/cross.sh $(ARCH)
	@$(MAKE) --no-print-directory deb ARCH=$(ARCH)

# The binaries for ARCH, built by its cross compiler into build-ARCH; the
# build tool (tools/embed) by the native one.
_cross:
	@$(MAKE) --no-print-directory BUILD=build-$(ARCH) BUILD_CC=$(CC) \
		CC=$(TRIPLET_$(ARCH))-gcc PKG_CONFIG=$(TRIPLET_$(ARCH))-pkg-config \
		$(BINS:$(BUILD)/%=build-$(ARCH)/%) $(UNIT_TESTS:$(BUILD)/%=build-$(ARCH)/%)
	@$(MAKE) --no-print-directory all $(BUILD)/libslowsync.so

# make bench's slow-storage figures (BENCH_ONLY=slowdisk) preload the shim.
_bench: $(BUILD)/libslowsync.so

cross-all:
	@$(MAKE) --no-print-directory cross ARCH=arm64
	@$(MAKE) --no-print-directory cross ARCH=armhf

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# libFuzzer targets (clang): tests/fuzz/fuzz.mk.
include tests/fuzz/fuzz.mk

FORCE:
