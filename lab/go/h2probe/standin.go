// The lab's Go apiserver stand-in and its watch client: the rollout of a Go
// HTTP/2 server over TLS, as kube-apiserver shuts down, for the goaway-tls
// lab scenario.
//
//	h2probe standin -impl xnet|std -addr 0.0.0.0:6443 -name m1 -cert F -key F
//	    -truth lifecycle.jsonl -drain D -shutdown-timeout T [-keylog F]
//	  serves /readyz, /healthz, /livez, /ok and /watch (a stream of ~200-byte
//	  event lines every 100 ms until the request ends). On SIGTERM: /readyz
//	  turns red, D later Shutdown() closes the listener and sends GOAWAY on
//	  every HTTP/2 connection; then it waits for the open requests at most T
//	  and exits, cutting every watch still open: the common Go pattern
//	  `ctx, cancel := context.WithTimeout(ctx, T); srv.Shutdown(ctx)` with
//	  a T shorter than the requests it serves. Each step is one line of the
//	  lab's lifecycle record (the same JSON lines the Rust stand-in writes).
//	h2probe watch -impl xnet|std -addr A -ca F -name NAME -n N -out F -for D
//	  N watchers, each on its own connection, GET /watch and read it to its
//	  end, then watch again (as a reflector does), for at most D. Each watch
//	  that ends is one line of F in the lab's request-record format;
//	  prints "ready" once every watcher's first watch has its headers.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// jsonLines appends one JSON object per line to a file shared with the
// lab's other processes: one write per line on an O_APPEND file, so lines
// never interleave.
type jsonLines struct {
	mu sync.Mutex
	f  *os.File
}

func (j *jsonLines) write(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fail(err.Error())
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		fail("writing " + j.f.Name() + ": " + err.Error())
	}
}

// lifecycle appends the lab's lifecycle lines for one instance.
type lifecycle struct {
	out  jsonLines
	name string
}

func (l *lifecycle) record(event string, detail interface{}) {
	line := map[string]interface{}{
		"t_ns":     time.Now().UnixNano(),
		"instance": l.name,
		"pid":      os.Getpid(),
		"event":    event,
	}
	if detail != nil {
		line["detail"] = detail
	}
	l.out.write(line)
}

func standin(args []string) {
	fs := flagSet("standin")
	impl := fs.String("impl", "xnet", "HTTP/2 copy: xnet or std")
	addr := fs.String("addr", "0.0.0.0:6443", "listen address")
	name := fs.String("name", "m1", "instance name in the lifecycle record")
	certFile := fs.String("cert", "", "serving certificate (PEM)")
	keyFile := fs.String("key", "", "serving key (PEM)")
	truth := fs.String("truth", "", "lifecycle record (JSON lines, appended)")
	keylog := fs.String("keylog", "", "TLS key log file")
	drain := fs.Duration("drain", 7*time.Second, "after SIGTERM, /readyz red this long before Shutdown")
	shutdownTimeout := fs.Duration("shutdown-timeout", time.Second, "Shutdown's deadline; the process exits when it passes")
	if err := fs.Parse(args); err != nil {
		fail(err.Error())
	}
	if *certFile == "" || *keyFile == "" || *truth == "" {
		fail("standin needs -cert, -key and -truth")
	}
	kp, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fail(fmt.Sprintf("%s, %s: %v", *certFile, *keyFile, err))
	}
	tf, err := os.OpenFile(*truth, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fail(err.Error())
	}
	life := &lifecycle{out: jsonLines{f: tf}, name: *name}
	tc := &tls.Config{Certificates: []tls.Certificate{kp}, NextProtos: []string{"h2", "http/1.1"}}
	if *keylog != "" {
		f, err := os.OpenFile(*keylog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			fail(err.Error())
		}
		tc.KeyLogWriter = f
	}
	var draining atomic.Bool
	var watches atomic.Int64
	mux := http.NewServeMux()
	ready := func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "[-]shutdown failed: reason withheld\nreadyz check failed\n")
			return
		}
		io.WriteString(w, "ok")
	}
	mux.HandleFunc("/readyz", ready)
	alive := func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }
	mux.HandleFunc("/healthz", alive)
	mux.HandleFunc("/livez", alive)
	mux.HandleFunc("/ok", alive)
	mux.HandleFunc("/watch", func(w http.ResponseWriter, r *http.Request) {
		watches.Add(1)
		defer watches.Add(-1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		// An event about the size of a small object's watch event, so the
		// stream looks like a watch on the wire (responses above a few
		// hundred bytes, the client silent).
		pad := strings.Repeat("x", 160)
		for n := 0; ; n++ {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
				if _, err := fmt.Fprintf(w, "{\"type\":\"MODIFIED\",\"instance\":%q,\"n\":%d,\"pad\":%q}\n", *name, n, pad); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
	})
	srv := &http.Server{Handler: mux, TLSConfig: tc}
	switch *impl {
	case "xnet":
		if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
			fail(err.Error())
		}
	case "std":
	default:
		fail("unknown -impl " + *impl)
	}
	var open atomic.Int64
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fail(err.Error())
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	life.record("listening", map[string]string{"addr": ln.Addr().String()})
	go srv.Serve(tls.NewListener(ln, tc))
	life.record("ready", nil)
	say("READY")
	<-term
	life.record("sigterm", nil)
	draining.Store(true)
	life.record("readyz_red", nil)
	time.Sleep(*drain)
	ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	// Shutdown closes the listener, then runs the HTTP/2 servers' shutdown
	// hooks: GOAWAY on every connection.
	life.record("listener_closed", map[string]int64{"open_connections": open.Load(), "inflight": watches.Load()})
	life.record("goaway_sent", map[string]int64{"connections": open.Load()})
	go func() { done <- srv.Shutdown(ctx) }()
	if err := <-done; errors.Is(err, context.DeadlineExceeded) {
		life.record("requests_cut", map[string]interface{}{"connections": open.Load(), "inflight": watches.Load(), "deadline_s": shutdownTimeout.Seconds()})
	} else if err != nil {
		fail("shutdown: " + err.Error())
	} else {
		life.record("drained", nil)
	}
	life.record("exit", nil)
	// Exits with its connections open: the kernel closes them.
	os.Exit(0)
}

func flagSet(name string) *flag.FlagSet {
	return flag.NewFlagSet(name, flag.ExitOnError)
}

// watchRecord is one line of the lab's request records (lab/src/loadgen.rs).
type watchRecord struct {
	Client  string `json:"client"`
	Seq     uint64 `json:"seq"`
	StartNs int64  `json:"start_ns"`
	EndNs   int64  `json:"end_ns"`
	Outcome string `json:"outcome"`
	Status  *int   `json:"status,omitempty"`
	Conn    uint64 `json:"conn"`
	Local   string `json:"local,omitempty"`
	Error   string `json:"error,omitempty"`
}

// outcome names a watch's end as the lab's records do.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "connection refused"):
		return "refused"
	case strings.Contains(s, "connection reset"):
		return "reset"
	case strings.Contains(s, "timeout"), strings.Contains(s, "deadline exceeded"):
		return "timeout"
	case strings.Contains(s, "tls:"), strings.Contains(s, "x509:"):
		return "tls"
	// A stream above the GOAWAY's last-stream-id: never processed.
	case strings.Contains(s, "GOAWAY") && !strings.Contains(s, "closed the connection"):
		return "goaway"
	default:
		// The server ended the connection under a started response,
		// GOAWAY first or not ("http2: server sent GOAWAY and closed the
		// connection", "unexpected EOF").
		return "eof"
	}
}

func watch(args []string) {
	fs := flagSet("watch")
	impl := fs.String("impl", "xnet", "HTTP/2 copy: xnet or std")
	addr := fs.String("addr", "", "server address")
	caFile := fs.String("ca", "", "CA certificate (PEM)")
	name := fs.String("name", "watch", "client name in the records")
	n := fs.Int("n", 2, "watchers, one connection each")
	out := fs.String("out", "", "request records (JSON lines)")
	length := fs.Duration("for", time.Minute, "stop after this long")
	if err := fs.Parse(args); err != nil {
		fail(err.Error())
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail(err.Error())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail(*caFile + ": no certificate")
	}
	f, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fail(err.Error())
	}
	records := &jsonLines{f: f}
	write := func(r watchRecord) { records.write(r) }
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		fail(err.Error())
	}
	deadline := time.Now().Add(*length)
	started := make(chan struct{}, *n)
	var seq atomic.Uint64
	for i := 0; i < *n; i++ {
		conn := uint64(i)
		// Its own transport: its own connection, as separate client
		// processes would have.
		tc := &tls.Config{RootCAs: pool, ServerName: host, NextProtos: []string{"h2"}}
		var rt http.RoundTripper
		switch *impl {
		case "xnet":
			rt = &http2.Transport{TLSClientConfig: tc}
		case "std":
			rt = &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
		default:
			fail("unknown -impl " + *impl)
		}
		c := &http.Client{Transport: rt}
		go func() {
			first := true
			for time.Now().Before(deadline) {
				var local string
				trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
					local = info.Conn.LocalAddr().String()
				}}
				ctx, cancel := context.WithDeadline(httptrace.WithClientTrace(context.Background(), trace), deadline)
				req, err := http.NewRequestWithContext(ctx, "GET", "https://"+*addr+"/watch", nil)
				if err != nil {
					fail(err.Error())
				}
				rec := watchRecord{Client: *name, Seq: seq.Add(1) - 1, StartNs: time.Now().UnixNano(), Conn: conn}
				resp, err := c.Do(req)
				if first {
					first = false
					started <- struct{}{}
				}
				if err == nil {
					st := resp.StatusCode
					rec.Status = &st
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				cancel()
				if err != nil && time.Now().After(deadline) {
					// Ended by its own deadline: not a failure, not recorded.
					return
				}
				rec.EndNs = time.Now().UnixNano()
				rec.Outcome = outcome(err)
				rec.Local = local
				if err != nil {
					rec.Error = err.Error()
				}
				write(rec)
				if err != nil {
					// A reflector backs off before watching again.
					time.Sleep(200 * time.Millisecond)
				}
			}
		}()
	}
	for i := 0; i < *n; i++ {
		<-started
	}
	say("ready")
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-term:
	case <-time.After(time.Until(deadline)):
	}
}
