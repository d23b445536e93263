//! PNG files of the figures' pixels, through the `png` crate.

/// PNG file bytes of an RGB image (`rgb.len() == 3 * width * height`).
pub fn encode(width: u32, height: u32, rgb: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_and_decodes_to_the_same_pixels() {
        let (w, h) = (7u32, 5u32);
        let rgb: Vec<u8> = (0..3 * w * h).map(|k| (k * 37 % 251) as u8).collect();
        let bytes = super::encode(w, h, &rgb).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut back = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut back).unwrap();
        assert_eq!((info.width, info.height), (w, h));
        assert_eq!(&back[..info.buffer_size()], &rgb[..]);
        assert!(super::encode(w, h, &rgb[1..]).is_err());
    }
}
