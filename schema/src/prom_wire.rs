//! Encoders for remote-read answers and remote-write requests that keep a
//! sample value of -0.0.
//!
//! proto3 leaves a scalar equal to its default off the wire, and prost tests
//! that with `!=`, which holds -0.0 equal to 0.0: a sample of -0.0 encoded by
//! prost arrives as +0.0. Go's protobuf (Prometheus) compares the bits and
//! keeps the sign. These encoders write a -0.0 sample or exemplar value out
//! explicitly and everything else with prost; the samples and exemplars of
//! a series come after its other fields, which every protobuf parser
//! accepts (fields may appear in any order, repeated ones merge).

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use crate::prompb::{ReadResponse, TimeSeries, WriteRequest};

/// `response` encoded, -0.0 values kept.
pub fn encode_read_response(response: &ReadResponse) -> Vec<u8> {
    let mut out = Vec::new();
    for result in &response.results {
        let mut series = Vec::new();
        for ts in &result.timeseries {
            put_message(1, &time_series(ts), &mut series);
        }
        put_message(1, &series, &mut out);
    }
    out
}

/// `request` encoded, -0.0 values kept.
pub fn encode_write_request(request: &WriteRequest) -> Vec<u8> {
    let mut out = Vec::new();
    for ts in &request.timeseries {
        put_message(1, &time_series(ts), &mut out);
    }
    WriteRequest { timeseries: Vec::new(), metadata: request.metadata.clone() }.encode(&mut out).expect("a Vec grows");
    out
}

fn time_series(ts: &TimeSeries) -> Vec<u8> {
    let rest = TimeSeries {
        labels: ts.labels.clone(),
        samples: Vec::new(),
        exemplars: Vec::new(),
        histograms: ts.histograms.clone(),
    };
    let mut out = rest.encode_to_vec();
    for sample in &ts.samples {
        put_message(2, &keeping_negative_zero(sample.encode_to_vec(), 1, sample.value), &mut out);
    }
    for exemplar in &ts.exemplars {
        put_message(3, &keeping_negative_zero(exemplar.encode_to_vec(), 2, exemplar.value), &mut out);
    }
    out
}

/// prost's encoding of a message whose double field `tag` holds `value`,
/// with that field written out when prost left it off for being -0.0 (of a
/// scalar field that appears twice, the last one counts).
fn keeping_negative_zero(mut message: Vec<u8>, tag: u32, value: f64) -> Vec<u8> {
    if value == 0.0 && value.is_sign_negative() {
        encode_key(tag, WireType::SixtyFourBit, &mut message);
        message.extend_from_slice(&value.to_le_bytes());
    }
    message
}

fn put_message(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompb::{Exemplar, Label, MetricMetadata, QueryResult, Sample};

    fn series(values: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![Label { name: "__name__".into(), value: "m".into() }],
            samples: values.iter().map(|&(timestamp, value)| Sample { value, timestamp }).collect(),
            ..Default::default()
        }
    }

    fn bits(ts: &[TimeSeries]) -> Vec<Vec<(i64, u64)>> {
        ts.iter().map(|t| t.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect()).collect()
    }

    const AWKWARD: [(i64, f64); 6] =
        [(0, -0.0), (1, 0.0), (-5, -0.0), (1_700_000_000_000, f64::NAN), (2, f64::NEG_INFINITY), (3, 5e-324)];

    #[test]
    fn negative_zero_survives_a_read_response_where_prost_drops_it() {
        let response = ReadResponse {
            results: vec![
                QueryResult { timeseries: vec![series(&AWKWARD), series(&[])] },
                QueryResult { timeseries: vec![] },
            ],
        };
        let decoded = ReadResponse::decode(encode_read_response(&response).as_slice()).unwrap();
        assert_eq!(decoded.results.len(), 2);
        assert_eq!(bits(&decoded.results[0].timeseries), bits(&response.results[0].timeseries));
        assert_eq!(decoded.results[0].timeseries[0].labels, response.results[0].timeseries[0].labels);
        // The defect this module exists for.
        let by_prost = ReadResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(by_prost.results[0].timeseries[0].samples[0].value.to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn a_write_request_keeps_its_values_and_metadata() {
        let mut with_exemplars = series(&[(7, 1.5)]);
        with_exemplars.exemplars = [-0.0, 0.0, 2.5]
            .iter()
            .map(|&value| Exemplar { labels: with_exemplars.labels.clone(), value, timestamp: 7 })
            .collect();
        let request = WriteRequest {
            timeseries: vec![series(&AWKWARD), with_exemplars],
            metadata: vec![MetricMetadata { metric_family_name: "m".into(), help: "h".into(), ..Default::default() }],
        };
        let decoded = WriteRequest::decode(encode_write_request(&request).as_slice()).unwrap();
        assert_eq!(bits(&decoded.timeseries), bits(&request.timeseries));
        let exemplar_bits = |ts: &TimeSeries| ts.exemplars.iter().map(|e| e.value.to_bits()).collect::<Vec<_>>();
        assert_eq!(exemplar_bits(&decoded.timeseries[1]), exemplar_bits(&request.timeseries[1]));
        assert_eq!(decoded.timeseries[1].exemplars[0].labels, request.timeseries[1].labels);
        assert_eq!(decoded.metadata, request.metadata);
    }
}
