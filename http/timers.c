#include <stdlib.h>
#include "timers.h"

static void heap_place(struct corrd_timer_heap *heap, size_t index, struct corrd_timer *timer)
{
    heap->entries[index] = timer;
    timer->index = index;
}

static void sift_up(struct corrd_timer_heap *heap, size_t index)
{
    struct corrd_timer *timer = heap->entries[index];

    while (index > 0) {
        size_t parent = (index - 1) / 2;
        if (heap->entries[parent]->deadline_ms <= timer->deadline_ms)
            break;
        heap_place(heap, index, heap->entries[parent]);
        index = parent;
    }
    heap_place(heap, index, timer);
}

static void sift_down(struct corrd_timer_heap *heap, size_t index)
{
    struct corrd_timer *timer = heap->entries[index];

    for (;;) {
        size_t child = 2 * index + 1;
        if (child >= heap->count)
            break;
        if (child + 1 < heap->count &&
            heap->entries[child + 1]->deadline_ms < heap->entries[child]->deadline_ms)
            child++;
        if (timer->deadline_ms <= heap->entries[child]->deadline_ms)
            break;
        heap_place(heap, index, heap->entries[child]);
        index = child;
    }
    heap_place(heap, index, timer);
}

void corrd_timer_heap_init(struct corrd_timer_heap *heap)
{
    heap->entries = NULL;
    heap->count = 0;
    heap->capacity = 0;
}

void corrd_timer_heap_dispose(struct corrd_timer_heap *heap)
{
    free(heap->entries);
    corrd_timer_heap_init(heap);
}

int corrd_timer_link(struct corrd_timer_heap *heap, struct corrd_timer *timer, uint64_t deadline_ms)
{
    if (heap->count == heap->capacity) {
        size_t capacity = heap->capacity == 0 ? 64 : heap->capacity * 2;
        struct corrd_timer **entries = realloc(heap->entries, capacity * sizeof(*entries));
        if (entries == NULL)
            return -1;
        heap->entries = entries;
        heap->capacity = capacity;
    }
    timer->deadline_ms = deadline_ms;
    heap->entries[heap->count] = timer;
    timer->index = heap->count++;
    sift_up(heap, timer->index);
    return 0;
}

void corrd_timer_unlink(struct corrd_timer_heap *heap, struct corrd_timer *timer)
{
    size_t index = timer->index;

    if (index == CORRD_TIMER_UNLINKED)
        return;
    timer->index = CORRD_TIMER_UNLINKED;
    struct corrd_timer *last = heap->entries[--heap->count];
    if (index == heap->count)
        return;
    heap_place(heap, index, last);
    if (index > 0 && heap->entries[(index - 1) / 2]->deadline_ms > last->deadline_ms)
        sift_up(heap, index);
    else
        sift_down(heap, index);
}

struct corrd_timer *corrd_timer_first(const struct corrd_timer_heap *heap)
{
    return heap->count == 0 ? NULL : heap->entries[0];
}
