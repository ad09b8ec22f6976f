package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ServeTCP starts a TCP server inside the namespace on addr (e.g. ":8080")
// that answers every connection with "NAME CLIENT-IP\n" and closes it. It
// returns a function that stops it; cleanup stops it too.
func (n *NS) ServeTCP(t T, addr, name string) func() {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on tcp %s in %s: %v", addr, n.Name, err)
	}
	stop := func() { ln.Close() }
	t.Cleanup(stop)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go answer(c, name)
		}
	}()
	return stop
}

// answer writes the line, half-closes, and drains what the client sent
// (curl sends a request) until it closes, so the client never sees a reset.
func answer(c net.Conn, name string) {
	defer c.Close()
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	fmt.Fprintf(c, "%s %s\n", name, host)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
}

// ServeUDP starts a UDP server inside the namespace on addr that answers
// every datagram with "NAME CLIENT-IP\n".
func (n *NS) ServeUDP(t T, addr, name string) func() {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on udp %s in %s: %v", addr, n.Name, err)
	}
	stop := func() { pc.Close() }
	t.Cleanup(stop)
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, host)), from)
		}
	}()
	return stop
}

// Answer is what a test server said: its name and the client address it saw.
type Answer struct {
	Server string
	Client string
}

func parseAnswer(line, addr string) (Answer, error) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return Answer{}, fmt.Errorf("bad answer %q from %s", line, addr)
	}
	return Answer{Server: f[0], Client: f[1]}, nil
}

// GetTCP connects from inside the namespace and reads the server's answer.
func (n *NS) GetTCP(addr string, timeout time.Duration) (Answer, error) {
	return n.getTCP(addr, net.Dialer{Timeout: timeout}, timeout)
}

// GetTCPFrom is GetTCP from a given local port: a load that opens
// thousands of connections a second to one address must not let the kernel
// hand out a port whose previous flow conntrack still remembers (the
// server closes first, so the client keeps no TIME_WAIT to stop it).
func (n *NS) GetTCPFrom(addr string, localPort int, timeout time.Duration) (Answer, error) {
	return n.getTCP(addr, net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: localPort}}, timeout)
}

func (n *NS) getTCP(addr string, d net.Dialer, timeout time.Duration) (Answer, error) {
	var a Answer
	err := n.Do(func() error {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading answer from %s: %w", addr, err)
		}
		a, err = parseAnswer(line, addr)
		return err
	})
	return a, err
}

// Loads' local ports: below the kernel's ephemeral range (32768-60999), per
// namespace, so concurrent loads from one namespace never share one.
const (
	loadPortFirst = 10000
	loadPortLast  = 32767
)

var (
	loadPortsMu sync.Mutex
	loadPorts   = map[string]int{}
)

// nextLoadPort hands out the namespace's next load port, round the range.
func (n *NS) nextLoadPort() int {
	loadPortsMu.Lock()
	defer loadPortsMu.Unlock()
	p := loadPorts[n.Name]
	if p < loadPortFirst || p >= loadPortLast {
		p = loadPortFirst - 1
	}
	p++
	loadPorts[n.Name] = p
	return p
}

// LoadTCP is a request for StartLoad: one TCP request to addr, each from a
// local port of its own (see GetTCPFrom), so 22,000 requests in a row never
// reuse a port.
func (n *NS) LoadTCP(addr string, timeout time.Duration) func() error {
	return func() error {
		_, err := n.GetTCPFrom(addr, n.nextLoadPort(), timeout)
		return err
	}
}

// ErrNoAnswer is returned by GetUDP when no datagram came back in time.
var ErrNoAnswer = errors.New("no answer")

// GetUDP sends one datagram from a new socket (so a new conntrack flow)
// inside the namespace and reads the answer.
func (n *NS) GetUDP(addr string, timeout time.Duration) (Answer, error) {
	var a Answer
	err := n.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("hello\n")); err != nil {
			return err
		}
		buf := make([]byte, 2048)
		m, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("udp %s: %w", addr, ErrNoAnswer)
			}
			return err
		}
		a, err = parseAnswer(string(buf[:m]), addr)
		return err
	})
	return a, err
}

// HTTPGet makes one HTTP GET from inside the namespace.
func (n *NS) HTTPGet(url string, timeout time.Duration) (*http.Response, []byte, error) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// UDPSession is one UDP socket inside a namespace, connected to a fixed
// address: every datagram it sends belongs to the same conntrack flow, as
// with a long-lived DNS or statsd client.
type UDPSession struct {
	conn net.Conn
	addr string
}

// DialUDP opens a session from inside the namespace.
func (n *NS) DialUDP(addr string) (*UDPSession, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &UDPSession{conn: c, addr: addr}, nil
}

// Ask sends one datagram and waits for the answer. An ICMP error from an
// earlier datagram (a REJECT) shows up as ECONNREFUSED.
func (s *UDPSession) Ask(timeout time.Duration) (Answer, error) {
	_ = s.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := s.conn.Write([]byte("hello\n")); err != nil {
		return Answer{}, err
	}
	buf := make([]byte, 2048)
	m, err := s.conn.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return Answer{}, fmt.Errorf("udp %s: %w", s.addr, ErrNoAnswer)
		}
		return Answer{}, err
	}
	return parseAnswer(string(buf[:m]), s.addr)
}

// Close closes the socket.
func (s *UDPSession) Close() error { return s.conn.Close() }
