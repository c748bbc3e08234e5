/*
 * test_prune.c — the transport's pruning (transport/transport.c): one pruner
 * at a time, and a call made while one runs is not lost.  A worker that
 * found another pass running once dropped the news of a checkpoint that
 * pass had not seen: with no new records no checkpoint came again, the
 * journal stayed above half full, and a resync waiting for it to drain
 * waited for ever.  And transport_make_room, asked while a pass runs,
 * returns only once the pass it asked for is done: the resync engine looks
 * at the journal's size right after it, and a full journal that pass was
 * about to empty would make a destination go tracking for nothing.
 */
#include "check.h"
#include "catalog.h"
#include "clock.h"
#include "format.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[] = "/tmp/aimfs-prune-XXXXXX";
static char dir[64]; /* each test's own journal directory, under base */

static void new_journal_dir(const char *name)
{
	snprintf(dir, sizeof dir, "%s/%s", base, name);
	CHECK(mkdir(dir, 0700) == 0);
}

/* The recycle hook holds the first pass inside segment 1 until released. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool inside, released, made_room;
static int passes_held = 1; /* how many passes the hook holds in segment 1 */
static unsigned freed;

static bool hold_first(void *ctx, uint64_t number)
{
	(void)ctx;
	pthread_mutex_lock(&lock);
	if (number == 1 && passes_held > 0) {
		passes_held--;
		inside = true;
		pthread_cond_broadcast(&cond);
		while (!released)
			pthread_cond_wait(&cond, &lock);
	}
	pthread_mutex_unlock(&lock);
	return false; /* not taken: deleted */
}

static void count_freed(void *ctx, uint64_t bytes)
{
	(void)ctx;
	(void)bytes;
	__atomic_add_fetch(&freed, 1, __ATOMIC_SEQ_CST);
}

/* Sealed segment n holding one FLUSH at LSN n, indexed in the catalog. */
static void write_segment(struct catalog *cat, uint64_t n)
{
	struct seg_header h = { .number = n, .first_lsn = n, .created_ns = clock_wall_ns() };
	struct seg_record r = { .type = SEG_FLUSH, .time_ns = clock_wall_ns() };
	struct seg_builder *b;
	struct seg_view *v;
	struct seg_err e;
	char name[SEG_FILE_NAME_LEN + 8], path[300];
	uint8_t *buf = NULL;
	size_t len = 0;
	int fd;

	memset(h.group, 0x42, sizeof h.group);
	b = seg_builder_new(&h);
	CHECK(b != NULL);
	seg_builder_add(b, &r);
	CHECK(seg_builder_finish(b, n, &buf, &len) == 0);
	seg_builder_free(b);
	seg_file_name(n, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
	CHECK(fd >= 0 && write(fd, buf, len) == (ssize_t)len);
	close(fd);
	CHECK(seg_view_new(buf, len, &v, &e) == 0);
	CHECK(catalog_index_segment(cat, v, len) == 0);
	seg_view_free(v);
	free(buf);
}

static bool segment_left(uint64_t n)
{
	char name[SEG_FILE_NAME_LEN + 8], path[300];

	seg_file_name(n, SEG_FILE_SUFFIX, name);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

static void *prune(void *arg)
{
	CHECK(transport_prune_now(arg) == 0);
	return NULL;
}

/*
 * The journal of both tests: segments 1 and 2, both acknowledged by dr1, the
 * backing files synced through segment 1 only; then a pass on thread *th,
 * held inside segment 1 by the recycle hook until `released`.
 */
static struct transport *start_held_pass(struct catalog **cat, pthread_t *th)
{
	static struct dest_config dc = { .name = "dr1", .url = "http://127.0.0.1:1/aim" };
	struct transport_config tc = { .journal_dir = dir, .dests = &dc, .ndests = 1,
				       .hooks = { .recycle = hold_first, .freed = count_freed } };
	struct transport *t = NULL;
	char path[300];

	snprintf(path, sizeof path, "%s/catalog.db", dir);
	CHECK(catalog_open(path, cat) == 0);
	write_segment(*cat, 1);
	write_segment(*cat, 2);
	memset(tc.group, 0x42, sizeof tc.group);
	CHECK(transport_new(&tc, &t) == 0);
	CHECK(catalog_dest_ack(*cat, "dr1", 2, 2, 1, 2, 100, clock_wall_ns()) == 0);
	transport_free(t);
	CHECK(transport_new(&tc, &t) == 0); /* with dr1's acknowledgement of both */

	transport_notify(t, 2, 1);
	CHECK(pthread_create(th, NULL, prune, t) == 0);
	pthread_mutex_lock(&lock);
	while (!inside)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	return t;
}

static void test_a_prune_asked_during_another_is_not_lost(void)
{
	struct catalog *cat = NULL;
	struct transport *t;
	pthread_t th;

	t = start_held_pass(&cat, &th);
	/* meanwhile a checkpoint syncs through segment 2, and a worker that
	 * heard of it asks for a prune: the pass running read the old LSN */
	transport_notify(t, 2, 2);
	CHECK(transport_prune_now(t) == 0);
	CHECK(segment_left(2));
	pthread_mutex_lock(&lock);
	released = true;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	pthread_join(th, NULL);

	CHECK_MSG(!segment_left(1) && !segment_left(2),
		  "segment 1 %s, segment 2 %s after both prunes", segment_left(1) ? "left" : "gone",
		  segment_left(2) ? "left" : "gone");
	CHECK(__atomic_load_n(&freed, __ATOMIC_SEQ_CST) == 2);
	transport_free(t);
	catalog_close(cat);
}

struct room_args {
	struct transport *t;
	bool segment_2_left; /* when make_room returned */
};

static void *make_room(void *arg)
{
	struct room_args *a = arg;
	struct catalog *cat = NULL;
	char path[300];

	snprintf(path, sizeof path, "%s/catalog.db", dir);
	CHECK(catalog_open(path, &cat) == 0);
	transport_make_room(a->t, cat);
	a->segment_2_left = segment_left(2);
	pthread_mutex_lock(&lock);
	made_room = true;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	catalog_close(cat);
	return NULL;
}

static void test_making_room_during_a_pass_waits_for_the_pass_it_asked_for(void)
{
	struct room_args a = { 0 };
	struct catalog *cat = NULL;
	struct transport *t;
	struct timespec ts;
	pthread_t pruner, maker;
	bool early;

	inside = released = made_room = false;
	passes_held = 1;
	t = start_held_pass(&cat, &pruner);
	/* the checkpoint the resync engine forced syncs through segment 2,
	 * then it makes room while that pass is still held */
	transport_notify(t, 2, 2);
	a.t = t;
	CHECK(pthread_create(&maker, NULL, make_room, &a) == 0);
	/* It must not come back while the pass it waits for cannot run.  (A
	 * wrong version returns at once; this one would wait for ever.) */
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 300000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&lock);
	while (!made_room && pthread_cond_timedwait(&cond, &lock, &ts) == 0)
		;
	early = made_room;
	released = true;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	pthread_join(maker, NULL);
	pthread_join(pruner, NULL);

	CHECK_MSG(!early, "transport_make_room returned while the pass it asked for could not run");
	CHECK_MSG(!a.segment_2_left, "segment 2 was still there when transport_make_room returned");
	CHECK(!segment_left(1) && !segment_left(2));
	transport_free(t);
	catalog_close(cat);
}

int main(void)
{
	char cmd[300];

	CHECK(mkdtemp(base) != NULL);
	new_journal_dir("lost");
	test_a_prune_asked_during_another_is_not_lost();
	new_journal_dir("room");
	test_making_room_during_a_pass_waits_for_the_pass_it_asked_for();
	snprintf(cmd, sizeof cmd, "rm -rf %s", base);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", base);
	return check_done("test_prune");
}
