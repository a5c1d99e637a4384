/*
 * Configuration: the INI file (libinih), its built-in default, overrides
 * from the command line, and the checks that turn a bad file into
 * "file:line: reason" before anything starts.
 */
#ifndef LOCKERD_CONFIG_H
#define LOCKERD_CONFIG_H

#include <stddef.h>

#include "board.h"
#include "log.h"

#define CONFIG_NAME_MAX 32
#define CONFIG_PATH_MAX 256
#define CONFIG_BUSES_MAX 8
#define CONFIG_BOARDS_MAX 32
#define CONFIG_CELLS_MAX 512
#define CONFIG_CELL_NUMBER_MAX 999

enum config_bus_type { CONFIG_BUS_TCP, CONFIG_BUS_RTU };
enum config_rs485 { CONFIG_RS485_AUTO, CONFIG_RS485_ON, CONFIG_RS485_OFF };

struct config_bus {
	char name[CONFIG_NAME_MAX];
	enum config_bus_type type;
	char host[64];
	int port;
	char device[CONFIG_PATH_MAX];
	int baud;
	char parity;
	int data_bits;
	int stop_bits;
	enum config_rs485 rs485;
	int timeout_ms;
	int line;
};

struct config_board {
	char name[CONFIG_NAME_MAX];
	char bus_name[CONFIG_NAME_MAX];
	int bus;                 /* index into buses, resolved after parsing */
	int unit;
	char profile_name[BOARD_NAME_MAX];
	struct board_profile profile;
	int line;
};

struct config_cell {
	int number;
	int board;               /* index into boards */
	char board_name[CONFIG_NAME_MAX];
	int channel;             /* 1-based */
	char size;               /* 'S', 'M', 'L' */
	int line;
};

struct config_timing {
	int poll_ms;
	int debounce_ms;
	int unlock_confirm_ms;
	int unlock_retries;
	int door_left_open_s;
	int door_left_open_repeat_s;
	int startup_read_ms;
	int board_backoff_min_ms;
	int board_backoff_max_ms;
};

/* Codes, reservations and the keypad ([codes], [kiosk]). */
struct config_codes {
	int digits;              /* human code length */
	int grace_s;             /* a consumed code re-opens within this */
	int dropoff_valid_h;     /* default validity of a drop-off code */
	int pickup_due_h;        /* a loaded item is overdue after this */
};

struct config_kiosk {
	int staff_session_s;
	int code_burst;          /* failed codes before a wait */
	int code_refill_s;       /* one more try back per period (<= 300) */
	int pin_burst;
	int pin_refill_s;
	int pin_hash_kib;        /* Argon2id cost of every PIN hash: memory */
	int pin_hash_passes;     /* ... and passes */
	int client_timeout_s;    /* a line or reply unfinished this long */
	int client_idle_s;       /* no request this long; 0 = never */
	char client_user[32];    /* the keypad / screen: a kept slot; "" none */
};

/* The operator control socket's clients ([control]). */
struct config_control {
	int client_timeout_s;
	int client_idle_s;
};

/* The platform link ([mqtt]); host "" = off. */
struct config_mqtt {
	char host[128];
	int port;
	char client_id[65];            /* "" = the locker id */
	char prefix[64];               /* topic prefix, "lockers" */
	char username[64];
	char password[128];
	char cafile[CONFIG_PATH_MAX];  /* set: TLS 1.2+ */
	char certfile[CONFIG_PATH_MAX];
	char keyfile[CONFIG_PATH_MAX];
	int keepalive_s;
	int inflight;                  /* events published, not yet acked */
	int reconnect_min_ms;
	int reconnect_max_ms;
	char platform_key[65];         /* hex Ed25519 public key, "" none */
	int command_window_s;          /* signed commands: |now - ts| */
	int command_rate;              /* signed commands run per second */
	int command_burst;             /* ... and at once after a quiet spell */
	int unsigned_rate;             /* the rest (unsigned, refused) */
	int unsigned_burst;
	int protocol;                  /* CONFIG_MQTT_AUTO, _V5, _V311 */
	int refused_alarm_s;           /* refusals: one alarm per window */
	int command_log_s;             /* stored replies kept this long */
	int command_log_rows;          /* ... and at most this many */
};

enum { CONFIG_MQTT_AUTO, CONFIG_MQTT_V5, CONFIG_MQTT_V311 };

struct config {
	char locker_id[65];
	char state_dir[CONFIG_PATH_MAX];
	char database[CONFIG_PATH_MAX];
	char key_file[CONFIG_PATH_MAX];
	char kiosk_socket[108];
	char profile_dir[CONFIG_PATH_MAX];
	enum log_level log_level;
	int log_syslog;
	char control_socket[108];
	struct config_control control;
	/* Folders and files others may read or write: refused at start (1),
	 * or only warned about (0, [locker] check_modes = warn). */
	int check_modes;
	struct config_timing timing;
	struct config_codes codes;
	struct config_kiosk kiosk;
	struct config_mqtt mqtt;

	struct config_bus buses[CONFIG_BUSES_MAX];
	int nbuses;
	struct config_board boards[CONFIG_BOARDS_MAX];
	int nboards;
	struct config_cell cells[CONFIG_CELLS_MAX];
	int ncells;
};

/*
 * Loads path, or the built-in default when path is NULL, then applies the
 * overrides ("section.key=value", NULL-terminated; may be NULL). On error
 * returns -1 with "origin:line: reason" in err.
 */
int config_load(struct config *c, const char *path, char *const *overrides,
    char *err, size_t errlen);
/* The same from text in memory (tests, fuzzing); origin names it. */
int config_load_text(struct config *c, const char *text, const char *origin,
    char *err, size_t errlen);
/* The built-in default configuration text (controller/lockerd.conf). */
const char *config_default_text(void);
const struct config_cell *config_cell_find(const struct config *c, int number);

#endif
