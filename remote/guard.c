/*
 * guard.c — the receiver's connections, from accept to close: what each
 * may cost, and for how long.  libmicrohttpd's own timeout restarts with
 * every byte, so a peer that sends one byte a second holds a connection
 * for ever; here every connection always has one deadline that no byte
 * moves, according to where it is:
 *
 *   handshake  accept + handshake_ns (the TLS handshake)
 *   header     end of the handshake + header_ns for the first request;
 *              its request line + header_ns for a later one (the whole
 *              header, as nginx's client_header_timeout)
 *   body       the end of the current window of header_ns: the body must
 *              bring min_rate * header_ns bytes in each such window from
 *              its start (no credit is kept from a fast start, so a body
 *              cannot run fast and then stall); bytes that come after a
 *              window short of that are answered 408 by the receiver, and
 *              a body that stops is closed BODY_LATE_NS after the window
 *   linger     after an early answer, while the rest of the body is read
 *              and dropped (so that the client reads the answer before the
 *              connection is reset)
 *   idle       end of a request + idle_ns, until the next request line
 *   busy       none: the request is being answered (libmicrohttpd's idle
 *              timeout still applies)
 *
 * A thread looks every TICK_NS and closes, by shutdown(2) of its socket,
 * every connection past its deadline; libmicrohttpd then sees the end of
 * the stream and cleans up as for a client that went away.  libmicrohttpd
 * (0.9.75, MHD_cleanup_connections) reports a connection closed, hence
 * guard_close, before it closes its socket, and guard_close takes the same
 * lock: a descriptor number is never shut down after it was reused.
 *
 * Connections that have not yet authenticated (no request of theirs passed
 * the certificate and token checks) are counted.  When a new one makes
 * them more than max_unauthenticated, one is closed: the oldest of the
 * address that holds the most of them.  A peer without credentials
 * therefore never holds more than that many slots, the rest stay for
 * senders that authenticated, and a sender that connects while others
 * trickle is never the one evicted unless every address holds a single
 * connection; then the oldest goes, which for an attacker means opening
 * connections as fast as they are evicted, a flood, not a slow drip.
 *
 * Lock: guard.lock guards the list and every guard_conn; it is a leaf
 * (nothing is called under it but shutdown(2) and the log).
 */
#include "remote_i.h"
#include "clock.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define TICK_NS (200ULL * 1000000ULL)
/* A body past its deadline is answered 408 when its next bytes come; one
 * that sends nothing more is closed this much later. */
#define BODY_LATE_NS (2ULL * 1000000000ULL)

enum phase { PH_HANDSHAKE, PH_HEADER, PH_BODY, PH_LINGER, PH_IDLE, PH_BUSY };

static const char *const phase_why[] = {
	[PH_HANDSHAKE] = "no TLS handshake within the handshake timeout",
	[PH_HEADER] = "no whole request header within the header timeout",
	[PH_BODY] = "the body came slower than the minimum rate",
	[PH_LINGER] = "answered early; the rest of the body is not read",
	[PH_IDLE] = "idle between requests for longer than the idle timeout",
	[PH_BUSY] = "",
};

struct guard_conn {
	struct guard_conn *prev, *next; /* in order of accept */
	struct guard *g;
	int fd;
	uint8_t addr[17];  /* address family, then the address: who holds it */
	char peer[INET6_ADDRSTRLEN];
	enum phase phase;
	uint64_t deadline_ns;  /* CLOCK_MONOTONIC; 0 for none */
	uint64_t win_start_ns, win_bytes; /* the body's current window */
	bool authed, doomed;
};

struct guard {
	struct remote_limits lim;
	struct rx_stats *rx;
	pthread_mutex_t lock;
	pthread_cond_t cond;   /* CLOCK_MONOTONIC; stop */
	bool stop;
	bool started;
	pthread_t thread;
	struct guard_conn *head, *tail;
	unsigned unauth;       /* neither authenticated nor closed by us */
};

static void count(atomic_uint_fast64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void set_unauth(struct guard *g)
{
	atomic_store_explicit(&g->rx->conns_unauth, g->unauth, memory_order_relaxed);
}

/* Closes c's connection (under the lock): libmicrohttpd sees it end. */
static void doom(struct guard *g, struct guard_conn *c, bool evicted)
{
	if (c->doomed)
		return;
	c->doomed = true;
	if (!c->authed) {
		g->unauth--;
		set_unauth(g);
	}
	/* Counted and said first: whoever sees the connection end sees why. */
	if (evicted) {
		count(&g->rx->evicted);
		log_debug("receiver: closed a connection from %s: more than %u connections are"
			  " not authenticated", c->peer, g->lim.max_unauthenticated);
		shutdown(c->fd, SHUT_RDWR);
		return;
	}
	switch (c->phase) {
	case PH_HANDSHAKE:
		count(&g->rx->handshake_timeouts);
		break;
	case PH_HEADER:
		count(&g->rx->header_timeouts);
		break;
	case PH_BODY:
		count(&g->rx->slow_uploads);
		break;
	case PH_IDLE:
		count(&g->rx->idle_closed);
		break;
	default:
		break;
	}
	log_debug("receiver: closed the connection from %s: %s", c->peer, phase_why[c->phase]);
	shutdown(c->fd, SHUT_RDWR);
}

/* The bytes a body must bring in each window. */
static uint64_t window_need(const struct guard *g)
{
	return (uint64_t)((double)g->lim.min_rate * (double)g->lim.header_ns / 1e9);
}

/* At the end of a body's window (under the lock): true if it brought
 * enough, and then the next window starts. */
static bool window_passed(struct guard *g, struct guard_conn *c, uint64_t now)
{
	if (c->win_bytes < window_need(g))
		return false;
	c->win_start_ns = now;
	c->win_bytes = 0;
	c->deadline_ns = now + g->lim.header_ns;
	return true;
}

static bool same_addr(const struct guard_conn *a, const struct guard_conn *b)
{
	return memcmp(a->addr, b->addr, sizeof a->addr) == 0;
}

/* Over max_unauthenticated: closes the oldest connection of the address
 * holding the most unauthenticated ones (under the lock). */
static void evict(struct guard *g)
{
	struct guard_conn *victim = NULL;
	unsigned most = 0;

	for (struct guard_conn *c = g->head; c; c = c->next) {
		unsigned n = 0;

		if (c->authed || c->doomed)
			continue;
		for (struct guard_conn *o = c; o; o = o->next)
			if (!o->authed && !o->doomed && same_addr(c, o))
				n++;
		/* c is the oldest of its address still counted when first met */
		if (n > most) {
			most = n;
			victim = c;
		}
	}
	if (victim)
		doom(g, victim, true);
}

static void *reaper(void *arg)
{
	struct guard *g = arg;

	pthread_mutex_lock(&g->lock);
	while (!g->stop) {
		struct timespec ts;
		uint64_t now = clock_mono_ns() + TICK_NS;

		ts.tv_sec = (time_t)(now / 1000000000ULL);
		ts.tv_nsec = (long)(now % 1000000000ULL);
		pthread_cond_timedwait(&g->cond, &g->lock, &ts);
		now = clock_mono_ns();
		for (struct guard_conn *c = g->head; c; c = c->next) {
			if (c->doomed || !c->deadline_ns || now < c->deadline_ns)
				continue;
			if (c->phase == PH_BODY &&
			    (window_passed(g, c, now) || now < c->deadline_ns + BODY_LATE_NS))
				continue;
			doom(g, c, false);
		}
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

int guard_start(const struct remote_limits *lim, struct rx_stats *rx, struct guard **out)
{
	struct guard *g = calloc(1, sizeof *g);
	pthread_condattr_t ca;
	int rc;

	if (!g)
		return -ENOMEM;
	g->lim = *lim;
	g->rx = rx;
	pthread_mutex_init(&g->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->cond, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&g->thread, NULL, reaper, g);
	if (rc) {
		log_error("cannot start the receiver's connection guard: %s", strerror(rc));
		guard_stop(g);
		return -rc;
	}
	g->started = true;
	*out = g;
	return 0;
}

void guard_stop(struct guard *g)
{
	if (!g)
		return;
	if (g->started) {
		pthread_mutex_lock(&g->lock);
		g->stop = true;
		pthread_cond_signal(&g->cond);
		pthread_mutex_unlock(&g->lock);
		pthread_join(g->thread, NULL);
	}
	/* libmicrohttpd was stopped first: every connection was closed. */
	pthread_cond_destroy(&g->cond);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

struct guard_conn *guard_open(struct guard *g, int fd, const struct sockaddr *addr)
{
	struct guard_conn *c = calloc(1, sizeof *c);

	if (!c)
		return NULL;
	c->g = g;
	c->fd = fd;
	snprintf(c->peer, sizeof c->peer, "?");
	if (addr && addr->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)addr;

		c->addr[0] = AF_INET;
		memcpy(c->addr + 1, &in->sin_addr, 4);
		inet_ntop(AF_INET, &in->sin_addr, c->peer, sizeof c->peer);
	} else if (addr && addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;

		c->addr[0] = AF_INET6;
		memcpy(c->addr + 1, &in6->sin6_addr, 16);
		inet_ntop(AF_INET6, &in6->sin6_addr, c->peer, sizeof c->peer);
	}
	c->phase = PH_HANDSHAKE;
	c->deadline_ns = clock_mono_ns() + g->lim.handshake_ns;
	pthread_mutex_lock(&g->lock);
	c->prev = g->tail;
	if (g->tail)
		g->tail->next = c;
	else
		g->head = c;
	g->tail = c;
	g->unauth++;
	if (g->lim.max_unauthenticated && g->unauth > g->lim.max_unauthenticated)
		evict(g);
	set_unauth(g);
	count(&g->rx->conns_accepted);
	atomic_fetch_add_explicit(&g->rx->conns_open, 1, memory_order_relaxed);
	pthread_mutex_unlock(&g->lock);
	return c;
}

void guard_close(struct guard_conn *c)
{
	struct guard *g;

	if (!c)
		return;
	g = c->g;
	pthread_mutex_lock(&g->lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		g->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		g->tail = c->prev;
	if (!c->doomed && !c->authed) {
		g->unauth--;
		set_unauth(g);
	}
	if (!c->doomed && c->phase == PH_HANDSHAKE)
		count(&g->rx->handshake_failures);
	atomic_fetch_sub_explicit(&g->rx->conns_open, 1, memory_order_relaxed);
	pthread_mutex_unlock(&g->lock);
	free(c);
}

void guard_handshake_done(struct guard_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->g->lock);
	if (c->phase == PH_HANDSHAKE) {
		c->phase = PH_HEADER;
		c->deadline_ns = clock_mono_ns() + c->g->lim.header_ns;
	}
	pthread_mutex_unlock(&c->g->lock);
}

void guard_request_line(struct guard_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->g->lock);
	/* The first request's header is due since the end of the handshake
	 * (a handshake not seen ending is over now). */
	if (c->phase != PH_HEADER) {
		c->phase = PH_HEADER;
		c->deadline_ns = clock_mono_ns() + c->g->lim.header_ns;
	}
	pthread_mutex_unlock(&c->g->lock);
}

void guard_authenticated(struct guard_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->g->lock);
	if (!c->authed) {
		c->authed = true;
		if (!c->doomed) {
			c->g->unauth--;
			set_unauth(c->g);
		}
	}
	pthread_mutex_unlock(&c->g->lock);
}

void guard_headers_done(struct guard_conn *c, bool body)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->g->lock);
	body = body && c->g->lim.min_rate;
	c->phase = body ? PH_BODY : PH_BUSY;
	c->win_start_ns = clock_mono_ns();
	c->win_bytes = 0;
	c->deadline_ns = body ? c->win_start_ns + c->g->lim.header_ns : 0;
	pthread_mutex_unlock(&c->g->lock);
}

bool guard_body(struct guard_conn *c, size_t n)
{
	bool ok = true;

	if (!c)
		return true;
	pthread_mutex_lock(&c->g->lock);
	if (c->phase == PH_BODY) {
		uint64_t now = clock_mono_ns();

		ok = now < c->deadline_ns || window_passed(c->g, c, now);
		c->win_bytes += n;
		if (!ok) {
			/* answered 408 by the caller: counted here, once */
			count(&c->g->rx->slow_uploads);
			c->phase = PH_BUSY;
			c->deadline_ns = 0;
		}
	}
	pthread_mutex_unlock(&c->g->lock);
	return ok;
}

void guard_linger(struct guard_conn *c, uint64_t until_ns)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->g->lock);
	c->phase = PH_LINGER;
	c->deadline_ns = until_ns;
	pthread_mutex_unlock(&c->g->lock);
}

void guard_request_done(struct guard_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->g->lock);
	c->phase = PH_IDLE;
	c->deadline_ns = clock_mono_ns() + c->g->lim.idle_ns;
	pthread_mutex_unlock(&c->g->lock);
}
