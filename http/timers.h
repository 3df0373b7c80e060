/* Per-worker deadlines for held requests: a binary min-heap on a monotonic millisecond clock. */
#ifndef corrd_timers_h
#define corrd_timers_h

#include <stddef.h>
#include <stdint.h>

#define CORRD_TIMER_UNLINKED SIZE_MAX

struct corrd_timer {
    uint64_t deadline_ms;
    size_t index; /* position in the heap, or CORRD_TIMER_UNLINKED */
};

struct corrd_timer_heap {
    struct corrd_timer **entries;
    size_t count;
    size_t capacity;
};

void corrd_timer_heap_init(struct corrd_timer_heap *heap);
void corrd_timer_heap_dispose(struct corrd_timer_heap *heap);
/* Returns 0, or -1 when memory for the heap could not be allocated. */
int corrd_timer_link(struct corrd_timer_heap *heap, struct corrd_timer *timer,
                     uint64_t deadline_ms);
void corrd_timer_unlink(struct corrd_timer_heap *heap, struct corrd_timer *timer);
/* Returns the earliest timer, or NULL when the heap is empty. */
struct corrd_timer *corrd_timer_first(const struct corrd_timer_heap *heap);

#endif
