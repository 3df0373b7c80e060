// go-corr is the Go baseline for corrd's benchmarks: the same /start/{id} and /ack/{id}
// endpoints and statuses, written with the standard library only, the way a Go developer would
// write it without tuning.
//
// A waiter is a buffered channel of capacity 1 in a sync.Map keyed by id, with one timer. An ack
// claims the waiter with a compare-and-swap on its state, so that exactly one of ack, timeout and
// client close decides the outcome:
//
//	GET /start/{id}?timeout=MS  200 with the ack's body; 504 on timeout; 409 if {id} is already
//	                            waiting; 503 when -max-pending waiters are pending
//	POST /ack/{id}              202 delivered; 404 no waiter pending; 429 the waiter already
//	                            has its ack; 413 body larger than -max-ack-bytes
//
// HTTP/1.1 only: Go 1.19's standard library serves HTTP/2 over TLS alone, not cleartext h2c.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	statePending   int32 = iota // no ack yet
	stateDelivered              // an ack's message is in the channel
	stateClosed                 // the waiter left: timed out or the client went away
)

type message struct {
	body        []byte
	contentType string
}

type waiter struct {
	state atomic.Int32
	ch    chan message // capacity 1; written only by the ack that moved state to stateDelivered
}

type server struct {
	waiters        sync.Map // id -> *waiter
	pending        atomic.Int64
	defaultTimeout time.Duration
	maxTimeout     time.Duration
	maxAckBytes    int64
	maxPending     int64
}

// parseID returns the percent-decoded id after prefix, or writes 400 and returns ok=false.
func parseID(w http.ResponseWriter, r *http.Request, prefix string) (string, bool) {
	raw := strings.TrimPrefix(r.URL.EscapedPath(), prefix)
	if raw == "" || strings.Contains(raw, "/") {
		http.Error(w, "missing or invalid id: use /start/{id} or /ack/{id}", http.StatusBadRequest)
		return "", false
	}
	id, err := url.PathUnescape(raw)
	if err != nil {
		http.Error(w, "invalid id: "+err.Error(), http.StatusBadRequest)
		return "", false
	}
	return id, true
}

func (s *server) timeoutOf(r *http.Request) (time.Duration, error) {
	value := r.URL.Query().Get("timeout")
	if value == "" {
		return s.defaultTimeout, nil
	}
	ms, err := strconv.ParseUint(value, 10, 64)
	if err != nil || ms == 0 {
		return 0, errors.New("invalid timeout: expected whole milliseconds of at least 1")
	}
	d := time.Duration(ms) * time.Millisecond
	if ms > uint64(s.maxTimeout/time.Millisecond) {
		d = s.maxTimeout
	}
	return d, nil
}

func (s *server) handleStart(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r, "/start/")
	if !ok {
		return
	}
	timeout, err := s.timeoutOf(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.pending.Add(1) > s.maxPending {
		s.pending.Add(-1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many pending waiters (-max-pending reached); retry later",
			http.StatusServiceUnavailable)
		return
	}
	defer s.pending.Add(-1)

	wt := &waiter{ch: make(chan message, 1)}
	if _, loaded := s.waiters.LoadOrStore(id, wt); loaded {
		http.Error(w, fmt.Sprintf("a waiter for id %q is already pending", id), http.StatusConflict)
		return
	}
	defer s.waiters.Delete(id)

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var msg message
	select {
	case msg = <-wt.ch:
	case <-timer.C:
		if wt.state.CompareAndSwap(statePending, stateClosed) {
			http.Error(w, fmt.Sprintf("timed out: no ack for id %q within %d ms", id,
				timeout.Milliseconds()), http.StatusGatewayTimeout)
			return
		}
		msg = <-wt.ch // an ack won the race and is writing its message
	case <-r.Context().Done():
		if wt.state.CompareAndSwap(statePending, stateClosed) {
			return // the client has gone, so no response is written
		}
		msg = <-wt.ch
	}
	if msg.contentType != "" {
		w.Header().Set("Content-Type", msg.contentType)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(msg.body)))
	w.WriteHeader(http.StatusOK)
	w.Write(msg.body)
}

func (s *server) handleAck(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r, "/ack/")
	if !ok {
		return
	}

	body, err := io.ReadAll(io.LimitReader(r.Body, s.maxAckBytes+1))
	if err != nil {
		http.Error(w, "cannot read the ack body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if int64(len(body)) > s.maxAckBytes {
		http.Error(w, fmt.Sprintf("ack body exceeds -max-ack-bytes (%d)", s.maxAckBytes),
			http.StatusRequestEntityTooLarge)
		return
	}

	value, found := s.waiters.Load(id)
	if !found {
		http.Error(w, fmt.Sprintf("no waiter is pending for id %q; ack discarded", id),
			http.StatusNotFound)
		return
	}

	wt := value.(*waiter)
	if !wt.state.CompareAndSwap(statePending, stateDelivered) {
		if wt.state.Load() == stateDelivered {
			http.Error(w, fmt.Sprintf("the waiter for id %q already has its ack; ack dropped", id),
				http.StatusTooManyRequests)
		} else {
			http.Error(w, fmt.Sprintf("no waiter is pending for id %q; ack discarded", id),
				http.StatusNotFound)
		}
		return
	}

	wt.ch <- message{body: body, contentType: r.Header.Get("Content-Type")}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, "delivered to the waiter for id %q\n", id)
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed: use GET or POST", http.StatusMethodNotAllowed)
		return
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/start/"):
		s.handleStart(w, r)
	case strings.HasPrefix(r.URL.Path, "/ack/"):
		s.handleAck(w, r)
	default:
		http.Error(w, "not found: this server serves /start/{id} and /ack/{id}", http.StatusNotFound)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on (HOST:PORT; port 0 picks a free port)")
	defaultTimeoutMS := flag.Uint64("default-timeout-ms", 10000, "timeout of a waiter without ?timeout= (milliseconds)")
	maxTimeoutMS := flag.Uint64("max-timeout-ms", 60000, "larger ?timeout= values are clamped to this (milliseconds)")
	maxAckBytes := flag.Int64("max-ack-bytes", 1048576, "largest ack body; larger ones get 413 (bytes)")
	maxPending := flag.Int64("max-pending", 100000, "pending waiters allowed at once; more get 503")
	flag.Parse()

	s := &server{
		defaultTimeout: time.Duration(*defaultTimeoutMS) * time.Millisecond,
		maxTimeout:     time.Duration(*maxTimeoutMS) * time.Millisecond,
		maxAckBytes:    *maxAckBytes,
		maxPending:     *maxPending,
	}
	if s.defaultTimeout > s.maxTimeout {
		s.defaultTimeout = s.maxTimeout
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("msg=\"listen failed\" addr=%s error=%q", *listen, err)
	}
	log.Printf("msg=listening addr=%s gomaxprocs_env=%q", ln.Addr(), os.Getenv("GOMAXPROCS"))

	httpServer := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	stop := make(chan os.Signal, 1)
	stopped := make(chan struct{})
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-stop
		log.Printf("msg=\"shutting down\" signal=%s", sig)
		// Held waiters keep their connections busy; give them 2 s, then exit anyway.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := httpServer.Shutdown(ctx); err != nil {
			log.Printf("msg=\"shutdown incomplete\" error=%q", err)
		}
		close(stopped)
	}()
	if err := httpServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("msg=\"serve failed\" error=%q", err)
	}
	<-stopped
	log.Printf("msg=stopped")
}
