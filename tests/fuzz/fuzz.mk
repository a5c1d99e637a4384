# libFuzzer targets, built with clang (whatever CC is) into build-fuzz/.
# Included by the top-level Makefile, whose PKG_CFLAGS, PKG_LIBS, WARN and
# GEN_SRC (the embedded boards and default config) it uses.
#
#   make fuzz          build, then fuzz each target for FUZZ_SECONDS (60)
#   make fuzz-smoke    the same for FUZZ_SMOKE_SECONDS (10)
#   make fuzz-regress  replay every seed and past crash input once
#   make fuzz-build    only build
#
# Fuzzing works on a copy of tests/fuzz/corpus/TARGET/ under
# build-fuzz/fuzz/TARGET/, where crash-* files land; see tests/fuzz/README.md.

FUZZ_BUILD         ?= build-fuzz
FUZZ_CC            ?= clang
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_DIR           := tests/fuzz

# Target name and its -max_len.
FUZZ_TARGETS := fuzz_config:8192 fuzz_profile:2048 fuzz_board_reply:301 \
	fuzz_ctl_json:4096 fuzz_credential:400 fuzz_kiosk:4096 \
	fuzz_cmd:8192 fuzz_link:9000
FUZZ_NAMES   := $(foreach t,$(FUZZ_TARGETS),$(firstword $(subst :, ,$(t))))
FUZZ_BINS    := $(addprefix $(FUZZ_BUILD)/,$(FUZZ_NAMES))

FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -DLOCKERD_VERSION='"$(VERSION)"' \
	-g -O1 -fno-omit-frame-pointer \
	$(FUZZ_SAN) -fsanitize=fuzzer-no-link $(filter-out -Werror,$(WARN)) \
	-MMD -MP -Iproto -Icontroller $(PKG_CFLAGS)
FUZZ_LIBS   := $(PKG_LIBS) -lpthread -lm

fuzz_obj = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(1))

FUZZ_PROTO_OBJ := $(call fuzz_obj,proto/board.c proto/board_builtin.c \
	proto/inicheck.c) $(FUZZ_BUILD)/obj/gen/embedded.o

.PHONY: fuzz fuzz-smoke fuzz-regress fuzz-build

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@sh $(FUZZ_DIR)/run.sh fuzz $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	@sh $(FUZZ_DIR)/run.sh fuzz $(FUZZ_BUILD) $(FUZZ_SMOKE_SECONDS) \
		$(FUZZ_TARGETS)

fuzz-regress: fuzz-build
	@sh $(FUZZ_DIR)/run.sh regress $(FUZZ_BUILD) $(FUZZ_TARGETS)

# The generated file comes from the Makefile's own rule, in $(BUILD)/gen.
$(FUZZ_BUILD)/obj/gen/embedded.o: $(GEN_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

# The targets themselves are held to -Werror, as the project's code is.
$(FUZZ_BUILD)/obj/$(FUZZ_DIR)/%.o: $(FUZZ_DIR)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Werror -c -o $@ $<

$(FUZZ_BUILD)/fuzz_config: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_config.c \
		controller/config.c controller/log.c controller/util.c) \
		$(FUZZ_PROTO_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/fuzz_profile: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_profile.c) \
		$(FUZZ_PROTO_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/fuzz_board_reply: \
		$(call fuzz_obj,$(FUZZ_DIR)/fuzz_board_reply.c) \
		$(FUZZ_PROTO_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/fuzz_ctl_json: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_ctl_json.c \
		controller/jsonl.c controller/log.c controller/util.c)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)

$(FUZZ_BUILD)/fuzz_credential: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_credential.c \
		controller/codes.c)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

# The keypad socket on a whole locker without boards: every controller
# file but main.c.
$(FUZZ_BUILD)/fuzz_kiosk: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_kiosk.c \
		controller/kiosk.c controller/lockerd.c controller/ctl.c \
		controller/link.c controller/platform.c controller/resv.c controller/bank.c controller/codes.c \
		controller/custody.c controller/staff.c controller/store.c \
		controller/throttle.c controller/jsonl.c controller/log.c \
		controller/util.c controller/config.c controller/mb.c \
		controller/notify.c controller/mark.c \
		proto/ledger.c proto/cmd.c) $(FUZZ_PROTO_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

# A message from the broker through link.c, on a whole locker without
# boards; the MQTT client faked (no platform.c).
$(FUZZ_BUILD)/fuzz_link: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_link.c \
		controller/kiosk.c controller/lockerd.c controller/ctl.c \
		controller/link.c controller/resv.c controller/bank.c \
		controller/codes.c controller/custody.c controller/staff.c \
		controller/store.c controller/throttle.c controller/jsonl.c \
		controller/log.c controller/util.c controller/config.c \
		controller/mb.c controller/notify.c controller/mark.c \
		proto/ledger.c proto/cmd.c) $(FUZZ_PROTO_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/fuzz_cmd: $(call fuzz_obj,$(FUZZ_DIR)/fuzz_cmd.c proto/cmd.c)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)
