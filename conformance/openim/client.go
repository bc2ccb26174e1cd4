package openim

// The webhook client: pkg/common/webhook/http_client.go (post, postWithQuery) on top of
// openimsdk/tools utils/httputil/http_client.go (HTTPClient.Post), as OpenIM runs them.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// NetworkError is servererrs.ErrNetwork (90004): the POST itself failed.
type NetworkError struct{ Err error }

func (e *NetworkError) Error() string { return "NetworkError: " + e.Err.Error() }

// DataError is servererrs.ErrData (90007): the reply did not decode into the response struct.
type DataError struct{ Detail string }

func (e *DataError) Error() string { return "DataError: " + e.Detail }

// Exchange is what went over the wire, kept for the report.
type Exchange struct {
	URL   string
	Body  []byte
	Reply []byte
}

type Client struct {
	client *http.Client
	url    string
	// OperationID is what mcontext.GetOperationID(ctx) returns for this call.
	OperationID string
	Last        Exchange
}

// sharedHTTP is httputil.NewHTTPClient(httputil.NewClientConfig()): one per OpenIM process,
// so connections are kept alive across callbacks as they are in OpenIM.
var sharedHTTP = &http.Client{
	Timeout:   15 * time.Second,
	Transport: &http.Transport{MaxConnsPerHost: 100},
}

// NewClient is NewWebhookClient(url).
func NewClient(baseURL string) *Client {
	return &Client{client: sharedHTTP, url: baseURL}
}

// httpPost is httputil.HTTPClient.Post.
func (c *Client) httpPost(ctx context.Context, fullURL string, headers map[string]string, data any, timeout int) ([]byte, error) {
	if timeout > 0 {
		var cancel func()
		ctx, cancel = context.WithTimeout(ctx, time.Second*time.Duration(timeout))
		defer cancel()
	}
	body := bytes.NewBuffer(nil)
	if data != nil {
		if err := json.NewEncoder(body).Encode(data); err != nil {
			return nil, fmt.Errorf("JSON encode failed: %w", err)
		}
	}
	c.Last = Exchange{URL: fullURL, Body: append([]byte(nil), body.Bytes()...)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fullURL, body)
	if err != nil {
		return nil, err
	}
	for key, value := range headers {
		req.Header.Set(key, value)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	result, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	c.Last.Reply = result
	return result, nil
}

// Post is webhook.Client.post: URL = url + "/" + command by concatenation (a query string in
// url ends up in front of the command), header operationID (sent as "Operationid").
func (c *Client) Post(command string, input any, output CallbackResp, timeout int) error {
	fullURL := c.url + "/" + command
	return c.send(fullURL, input, output, timeout)
}

// PostWithQuery is webhook.Client.postWithQuery (main only): the concatenated URL is parsed,
// its query (including anything that followed a "?" in url) gets the extra parameters, and
// the query is re-encoded.
func (c *Client) PostWithQuery(command string, input any, output CallbackResp, timeout int, queryParams map[string]string) error {
	fullURL := c.url + "/" + command
	parsedURL, err := url.Parse(fullURL)
	if err != nil {
		return &NetworkError{Err: err}
	}
	query := parsedURL.Query()
	for key, value := range queryParams {
		query.Set(key, value)
	}
	parsedURL.RawQuery = query.Encode()
	return c.send(parsedURL.String(), input, output, timeout)
}

func (c *Client) send(fullURL string, input any, output CallbackResp, timeout int) error {
	b, err := c.httpPost(context.Background(), fullURL, map[string]string{"operationID": c.OperationID}, input, timeout)
	if err != nil {
		return &NetworkError{Err: err}
	}
	if err = json.Unmarshal(b, output); err != nil {
		return &DataError{Detail: err.Error() + " response format error"}
	}
	return output.Parse()
}
