/*
 * The message ids of the keypad socket (proto/kiosk.md): what a reply or
 * a notice means for the person at the locker, with the names of the
 * parameters it carries. No sentence a person reads is written in C; the
 * catalogs (proto/messages/<locale>.json) hold the texts, keyed by these
 * ids, with {name} placeholders for the parameters, and the voice prompts
 * are named after them too.
 *
 * MSGID(constant, "id", "parameters, space separated")
 */
#ifndef LOCKERD_MSGID_H
#define LOCKERD_MSGID_H

#define MSGID_TABLE(X)                                                    \
	/* The applicant's code or scanned credential. */                   \
	X(MSG_DOOR_OPEN_DROPOFF, "door_open_dropoff", "cell row col")        \
	X(MSG_DOOR_OPEN_PICKUP, "door_open_pickup", "cell row col")          \
	X(MSG_INVALID_CODE, "invalid_code", "")                              \
	X(MSG_EXPIRED, "expired", "")                                        \
	X(MSG_USED, "used", "")                                              \
	X(MSG_CANCELLED, "cancelled", "")                                    \
	X(MSG_IN_PROGRESS, "in_progress", "cell")                            \
	X(MSG_PHONE_NEEDED, "phone_needed", "")                              \
	X(MSG_CODE_WAIT, "code_wait", "wait_s")                              \
	X(MSG_CELL_UNAVAILABLE, "cell_unavailable", "")                      \
	/* Staff at the keypad or screen. */                                 \
	X(MSG_LOGGED_IN, "logged_in", "name role session_s")                 \
	X(MSG_LOGGED_OUT, "logged_out", "")                                  \
	X(MSG_BAD_LOGIN, "bad_login", "")                                    \
	X(MSG_PIN_WAIT, "pin_wait", "wait_s")                                \
	X(MSG_NOT_LOGGED_IN, "not_logged_in", "")                            \
	X(MSG_ACCOUNT_CHANGED, "account_changed", "")                        \
	X(MSG_LOAD_OPEN, "load_open", "cell row col")                        \
	X(MSG_RETRIEVE_OPEN, "retrieve_open", "cell row col remaining")      \
	X(MSG_TAKE_BACK_OPEN, "take_back_open", "cell row col")              \
	X(MSG_SERVICE_OPEN, "service_open", "cell row col")                  \
	X(MSG_SERVICE_IN, "service_in", "cell")                              \
	X(MSG_SERVICE_OUT, "service_out", "cell")                            \
	X(MSG_FULL, "full", "size")                                          \
	X(MSG_NOTHING, "nothing", "")                                        \
	X(MSG_RETRIEVAL_OPEN_FIRST, "retrieval_open_first", "cell")          \
	X(MSG_CELL_REFUSED, "cell_refused", "cell reason")                   \
	/* Either. */                                                        \
	X(MSG_READY, "ready", "")                                            \
	X(MSG_HELP_REQUESTED, "help_requested", "")                          \
	X(MSG_UNRECORDED, "unrecorded", "")                                  \
	X(MSG_BAD_REQUEST, "bad_request", "field")                           \
	/* Notices: the doors, the staff session. */                         \
	X(MSG_DOOR_OPENED, "door_opened", "cell row col")                    \
	X(MSG_DROPOFF_DONE, "dropoff_done", "cell")                          \
	X(MSG_DROPOFF_EMPTY, "dropoff_empty", "cell")                        \
	X(MSG_PICKUP_DONE, "pickup_done", "cell")                            \
	X(MSG_DOOR_CLOSED, "door_closed", "cell")                            \
	X(MSG_DOOR_LEFT_OPEN, "door_left_open", "cell")                      \
	X(MSG_SESSION_ENDED, "session_ended", "why")

#define MSGID_ENUM(c, id, params) c,
enum msgid { MSGID_TABLE(MSGID_ENUM) MSG_COUNT };
#undef MSGID_ENUM

#endif
