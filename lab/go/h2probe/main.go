// h2probe: a TLS HTTP/2 server and client in both of Go's HTTP/2 copies
// (golang.org/x/net/http2 and the one bundled in net/http), driven by the
// drainwatch tests. Every state change is printed as one line on stdout, so
// the tests wait on lines, never on time. The server writes a TLS key log,
// so tshark can decrypt the capture and give the frames as ground truth.
//
//	h2probe server -impl xnet|std -addr 127.0.0.1:0 -keylog F [-max-streams N]
//	  prints "listening ADDR"; "shutdown" on stdin starts Shutdown(), which
//	  sends GOAWAY on every connection; prints "shutdown done" and exits.
//	  GET /hold answers headers, then holds the stream until shutdown.
//	  GET /close answers with "Connection: close" (a GOAWAY while serving).
//	  GET /ok answers 200; GET /readyz 200, or 503 once draining.
//	  With -drain D it also shuts down on SIGTERM as kube-apiserver does:
//	  /readyz turns red, D later Shutdown() starts (prints "draining" and
//	  "shutdown done").
//	h2probe client -impl xnet|std -addr A -hold N -close M
//	  opens N held streams and sends one GET /ok (so its connection is
//	  open), prints "ready", waits for "go" on stdin, sends M /close
//	  requests one after another (prints "closes M"), then waits for the
//	  held streams to end (the server's shutdown), prints
//	  "done ok=K failed=F" and exits on "exit" (or the end of stdin): until
//	  then its connections' read loops run, so every frame the server sent
//	  before closing them is read.
//	h2probe loop -impl xnet|std -addr A -path P -workers N -for D
//	  N workers send GET P one after another for D (a benchmark's load;
//	  with /close every request ends in a GOAWAY and a new connection),
//	  then prints "requests K failed F".
//	h2probe refuse -addr A
//	  a raw framer client that opens 2 streams before acknowledging the
//	  server's SETTINGS (server -max-streams 1): the second is refused with
//	  RST_STREAM REFUSED_STREAM. Prints "refused STREAM".
//	h2probe standin ... and h2probe watch ...: the lab's Go apiserver
//	  stand-in and its watch client (standin.go).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: h2probe server|client|loop|refuse|standin|watch [flags]")
	}
	switch os.Args[1] {
	case "standin":
		standin(os.Args[2:])
		return
	case "watch":
		watch(os.Args[2:])
		return
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	impl := fs.String("impl", "xnet", "HTTP/2 copy: xnet or std")
	addr := fs.String("addr", "127.0.0.1:0", "address")
	keylog := fs.String("keylog", "", "TLS key log file (server)")
	maxStreams := fs.Uint("max-streams", 0, "server: SETTINGS_MAX_CONCURRENT_STREAMS (0: default)")
	drain := fs.Duration("drain", 0, "server: on SIGTERM, /readyz red for this long, then Shutdown (0: no SIGTERM handling)")
	hold := fs.Int("hold", 1, "client: held streams")
	closes := fs.Int("close", 0, "client: /close requests")
	path := fs.String("path", "/ok", "loop: request path")
	workers := fs.Int("workers", 4, "loop: concurrent workers")
	length := fs.Duration("for", 5*time.Second, "loop: how long")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail(err.Error())
	}
	switch os.Args[1] {
	case "server":
		server(*impl, *addr, *keylog, uint32(*maxStreams), *drain)
	case "client":
		client(*impl, *addr, *hold, *closes)
	case "refuse":
		refuse(*addr)
	case "loop":
		loop(*impl, *addr, *path, *workers, *length)
	default:
		fail("unknown mode " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "h2probe:", msg)
	os.Exit(2)
}

func say(format string, a ...interface{}) {
	fmt.Printf(format+"\n", a...)
}

func cert() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail(err.Error())
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "h2probe"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		fail(err.Error())
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func server(impl, addr, keylog string, maxStreams uint32, drain time.Duration) {
	tc := &tls.Config{Certificates: []tls.Certificate{cert()}, NextProtos: []string{"h2"}}
	if keylog != "" {
		f, err := os.OpenFile(keylog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			fail(err.Error())
		}
		tc.KeyLogWriter = f
	}
	stopping := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-stopping
		io.WriteString(w, "bye\n")
	})
	var draining atomic.Bool
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "closing\n")
	})
	srv := &http.Server{Handler: mux, TLSConfig: tc}
	srv.RegisterOnShutdown(func() { close(stopping) })
	switch impl {
	case "xnet":
		if err := http2.ConfigureServer(srv, &http2.Server{MaxConcurrentStreams: maxStreams}); err != nil {
			fail(err.Error())
		}
	case "std":
		if maxStreams != 0 {
			fail("-max-streams needs -impl xnet")
		}
	default:
		fail("unknown -impl " + impl)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fail(err.Error())
	}
	say("listening %s", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, tc)) }()
	stop := make(chan struct{})
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			if in.Text() == "shutdown" {
				close(stop)
				return
			}
		}
	}()
	if drain > 0 {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		select {
		case <-term:
			draining.Store(true)
			say("draining")
			time.Sleep(drain)
		case <-stop:
		}
	} else {
		<-stop
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fail("shutdown: " + err.Error())
	}
	<-served
	say("shutdown done")
}

func transport(impl string) http.RoundTripper {
	tc := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}
	switch impl {
	case "xnet":
		return &http2.Transport{TLSClientConfig: tc}
	case "std":
		return &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	}
	fail("unknown -impl " + impl)
	return nil
}

func client(impl, addr string, hold, closes int) {
	c := &http.Client{Transport: transport(impl)}
	// Every connection's local port, once, so the tests know which
	// connections are this client's.
	var portsMu sync.Mutex
	ports := map[string]bool{}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		a := info.Conn.LocalAddr().String()
		portsMu.Lock()
		defer portsMu.Unlock()
		if !ports[a] {
			ports[a] = true
			say("conn %s", a)
		}
	}}
	newReq := func(path string) *http.Request {
		req, err := http.NewRequest("GET", "https://"+addr+path, nil)
		if err != nil {
			fail(err.Error())
		}
		return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, failed := 0, 0
	count := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed++
			fmt.Fprintln(os.Stderr, "h2probe: request:", err)
		} else {
			ok++
		}
	}
	started := make(chan struct{}, hold)
	for i := 0; i < hold; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Do(newReq("/hold"))
			if err != nil {
				started <- struct{}{}
				count(err)
				return
			}
			started <- struct{}{}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			count(err)
		}()
	}
	for i := 0; i < hold; i++ {
		<-started
	}
	get := func(path string) {
		resp, err := c.Do(newReq(path))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		count(err)
	}
	get("/ok")
	say("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() && in.Text() != "go" {
	}
	for i := 0; i < closes; i++ {
		get("/close")
	}
	say("closes %d", closes)
	wg.Wait()
	say("done ok=%d failed=%d", ok, failed)
	for in.Scan() && in.Text() != "exit" {
	}
}

func loop(impl, addr, path string, workers int, length time.Duration) {
	c := &http.Client{Transport: transport(impl)}
	deadline := time.Now().Add(length)
	var done, failed atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				resp, err := c.Get("https://" + addr + path)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil {
					failed.Add(1)
				} else {
					done.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	say("requests %d failed %d", done.Load(), failed.Load())
}

func refuse(addr string) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		fail(err.Error())
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		fail(err.Error())
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		fail(err.Error())
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, id := range []uint32{1, 3} {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", addr}, {":path", "/hold"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			fail(err.Error())
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			fail("reading: " + err.Error())
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			say("refused %d code=%d", rst.StreamID, rst.ErrCode)
			return
		}
	}
}
