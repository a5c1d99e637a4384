/*
 * lockerd: the locker controller. Command line, signals, and the poll()
 * loop: fixed slots rebuilt each pass, a timeout from the nearest deadline
 * on the monotonic clock, and one dispatch function per ready slot.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "lockerd.h"
#include "log.h"
#include "util.h"

#define OVERRIDES_MAX 32

enum { PFD_SIGNAL, PFD_MB, PFD_CTL, PFD_MAX = PFD_CTL + 1 + JSONL_CLIENTS_MAX };

static void
usage(FILE *f)
{
	fprintf(f,
"usage: lockerd [-c FILE] [--set SECTION.KEY=VALUE]...\n"
"       lockerd --check-config FILE\n"
"       lockerd --print-default-config\n"
"\n"
"The controller of one locker bank: drives the lock boards over Modbus and\n"
"keeps the cells' state and the event ledger in SQLite.\n"
"\n"
"  -c, --config FILE        configuration file (INI); without it lockerd runs\n"
"                           on the built-in default, a demo locker of 24 cells\n"
"                           served by locksim on 127.0.0.1:1502\n"
"      --set S.K=V          override one key, e.g. --set 'bus sim.port=1502'\n"
"      --check-config FILE  check FILE and exit: 0 if good, else FILE:LINE:\n"
"                           reason on stderr and exit 1; nothing is started\n"
"      --print-default-config\n"
"                           print the built-in default configuration\n"
"  -h, --help               this text\n"
"  -V, --version            the version\n"
"\n"
"Signals: SIGTERM and SIGINT stop cleanly (relays off, database closed);\n"
"SIGHUP reloads the log level and timings from the file.\n");
}

static int
setup_signals(sigset_t *set)
{
	int fd;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	/* Blocked before any thread starts, so only signalfd sees them. */
	if (pthread_sigmask(SIG_BLOCK, set, NULL) != 0)
		return -1;
	fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
	return fd;
}

/* Returns 1 when the loop should stop. */
static int
signal_dispatch(struct lockerd *d, int fd)
{
	struct signalfd_siginfo si;

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP)
			lockerd_reload(d);
		else {
			log_info("signal %d: stopping", (int)si.ssi_signo);
			return 1;
		}
	}
	return 0;
}

static int
run(struct lockerd *d, int sigfd)
{
	struct pollfd pfd[PFD_MAX];
	int64_t next, now;
	int n, nctl, timeout;

	for (;;) {
		memset(pfd, 0, sizeof(pfd));
		pfd[PFD_SIGNAL].fd = sigfd;
		pfd[PFD_SIGNAL].events = POLLIN;
		pfd[PFD_MB].fd = mb_fd(d->mb);
		pfd[PFD_MB].events = POLLIN;
		nctl = d->ctl ? jsonl_pollfds(d->ctl, &pfd[PFD_CTL],
		    PFD_MAX - PFD_CTL) : 0;
		next = bank_next_deadline(&d->bank);
		now = util_mono_ms();
		timeout = next == INT64_MAX ? -1 : next <= now ? 0 :
		    next - now > 60000 ? 60000 : (int)(next - now);
		n = poll(pfd, (nfds_t)(PFD_CTL + nctl), timeout);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			log_error("poll: %s", strerror(errno));
			return -1;
		}
		if ((pfd[PFD_SIGNAL].revents & POLLIN) &&
		    signal_dispatch(d, sigfd))
			return 0;
		if (pfd[PFD_MB].revents & POLLIN)
			lockerd_mb_dispatch(d);
		if (nctl)
			jsonl_dispatch(d->ctl, &pfd[PFD_CTL], nctl);
		lockerd_tick(d);
	}
}

static int
check_config(const char *path)
{
	struct config *c = malloc(sizeof(*c));
	char err[512];
	int rc;

	if (c == NULL) {
		fprintf(stderr, "lockerd: out of memory\n");
		return 1;
	}
	rc = config_load(c, path, NULL, err, sizeof(err));
	if (rc == -1)
		fprintf(stderr, "%s\n", err);
	else
		printf("%s: ok (locker %s, %d buses, %d boards, %d cells)\n",
		    path, c->locker_id, c->nbuses, c->nboards, c->ncells);
	free(c);
	return rc == -1 ? 1 : 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "set", required_argument, NULL, 's' },
		{ "check-config", required_argument, NULL, 'C' },
		{ "print-default-config", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	static struct lockerd d; /* large; and the bank points into it */
	char *overrides[OVERRIDES_MAX + 1] = { NULL };
	const char *config_path = NULL;
	struct rlimit nocore = { 0, 0 };
	int noverrides = 0, ch, sigfd, rc;
	char err[512];
	sigset_t set;

	while ((ch = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			config_path = optarg;
			break;
		case 's':
			if (noverrides == OVERRIDES_MAX) {
				fprintf(stderr, "lockerd: at most %d --set\n",
				    OVERRIDES_MAX);
				return 2;
			}
			overrides[noverrides++] = optarg;
			break;
		case 'C':
			return check_config(optarg);
		case 'P':
			fputs(config_default_text(), stdout);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("lockerd %s\n", LOCKERD_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "lockerd: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		return 2;
	}
	if (config_load(&d.cfg, config_path, overrides, err, sizeof(err)) ==
	    -1) {
		fprintf(stderr, "lockerd: %s\n", err);
		return 1;
	}
	d.config_path = config_path;
	d.overrides = overrides;
	log_init("lockerd", d.cfg.log_level, d.cfg.log_syslog);
	/* Keys and codes will live in this process's memory: no core dumps. */
	if (setrlimit(RLIMIT_CORE, &nocore) == -1 ||
	    prctl(PR_SET_DUMPABLE, 0) == -1)
		log_warn("could not turn core dumps off: %s", strerror(errno));
	if ((sigfd = setup_signals(&set)) == -1)
		fatal("signals: %s", strerror(errno));
	log_info("lockerd %s starting, configuration %s", LOCKERD_VERSION,
	    config_path ? config_path : "(built-in default)");
	rc = lockerd_start(&d) == 0 ? run(&d, sigfd) : -1;
	lockerd_stop(&d);
	close(sigfd);
	log_info("stopped");
	return rc == 0 ? 0 : 1;
}
