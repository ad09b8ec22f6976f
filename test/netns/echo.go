package netns

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// ServeTCP starts a TCP server inside the namespace on addr (e.g.
// ":8080") that answers every connection with "NAME CLIENT-IP\n" and
// closes it. It stops when the test ends.
func (n *NS) ServeTCP(t testing.TB, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening in %s: %v", n.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s %s\n", name, host)
			c.Close()
		}
	}()
}

// Answer is what a test server said: its name and the client address it saw.
type Answer struct {
	Server string
	Client string
}

// GetTCP connects from inside the namespace and reads the server's answer.
func (n *NS) GetTCP(addr string, timeout time.Duration) (Answer, error) {
	var a Answer
	err := n.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading answer from %s: %w", addr, err)
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return fmt.Errorf("bad answer %q from %s", line, addr)
		}
		a = Answer{Server: f[0], Client: f[1]}
		return nil
	})
	return a, err
}
